// Output name templates and prompt slugs.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "fluxbatch/job/name_template.h"

using namespace fluxbatch::job;
using Catch::Matchers::ContainsSubstring;

namespace {

RenderItem sample_item() {
  RenderItem item;
  item.index = 7;
  item.item_index = 3;
  item.copy = 2;
  item.prompt = "A Red Fox, in the snow!";
  item.params.seed = 1234;
  item.params.width = 768;
  item.params.height = 512;
  item.params.steps = 28;
  return item;
}

}  // namespace

TEST_CASE("every placeholder renders, with zero padding", "[job]") {
  const RenderItem item = sample_item();
  CHECK(format_name("{index}-{item}-{copy}-{seed}-{width}x{height}-{steps}-{slug}", item) ==
        "7-3-2-1234-768x512-28-a-red-fox-in-the-snow.png");
  CHECK(format_name("{index:05}_{seed:08}", item) == "00007_00001234.png");
  CHECK(format_name("{seed:02}", item) == "1234.png");  // padding never truncates
  CHECK(format_name("{slug:9}", item) == "a-red-fox.png");
  CHECK(format_name(kDefaultNameTemplate, item) == "00007-a-red-fox-in-the-snow-1234.png");
}

TEST_CASE(".png is appended unless present; braces escape; subfolders are allowed", "[job]") {
  const RenderItem item = sample_item();
  CHECK(format_name("img-{index}.PNG", item) == "img-7.PNG");
  CHECK(format_name("img-{index}.jpg", item) == "img-7.jpg.png");
  CHECK(format_name("{{literal}}-{index}", item) == "{literal}-7.png");
  CHECK(format_name("item-{item}/{copy:03}", item) == "item-3/002.png");
  CHECK(format_name(".hidden-{index}", item) == ".hidden-7.png");
}

TEST_CASE("bad templates are rejected with the reason", "[job]") {
  CHECK(name_template_error("{index:05}-{slug}") == "");
  CHECK(name_template_error("{indx}") ==
        "unknown placeholder {indx} (did you mean {index}?); known: {index}, {item}, {copy}, "
        "{seed}, {width}, {height}, {steps}, {slug}");
  CHECK_THAT(name_template_error("{prompt}"), ContainsSubstring("unknown placeholder {prompt}; known:"));
  CHECK(name_template_error("{index") == "unclosed '{' (write '{{' for a literal brace)");
  CHECK(name_template_error("{a{index}") == "unclosed '{' (write '{{' for a literal brace)");
  CHECK(name_template_error("index}") == "unmatched '}' (write '}}' for a literal brace)");
  CHECK(name_template_error("{seed:x}") ==
        "bad format in {seed:x}: use {seed:05} to zero-pad to 5 digits (1 to 20)");
  CHECK(name_template_error("{seed:021}") ==
        "bad format in {seed:021}: use {seed:05} to zero-pad to 5 digits (1 to 20)");
  CHECK(name_template_error("{slug:0}") ==
        "bad format in {slug:0}: {slug:N} keeps at most N characters, N from 1 to 200");
  CHECK(name_template_error("") == "must not be empty");
  CHECK_THROWS_WITH(format_name("{bad}", sample_item()),
                    ContainsSubstring("name template \"{bad}\": unknown placeholder {bad}"));
}

TEST_CASE("templates cannot leave the output directory", "[job]") {
  const std::string inside = "must stay inside the output directory ('..' is not allowed)";
  CHECK(name_template_error("../{slug}") == inside);
  CHECK(name_template_error("a/../../{slug}") == inside);
  CHECK(name_template_error("../..") == inside);
  CHECK(name_template_error("..") == "");  // renders "...png": a plain file name
  CHECK(name_template_error("/tmp/{seed}") ==
        "must be a relative path inside the output directory, not absolute");
  CHECK(name_template_error("a\\..\\{seed}") == "must not contain '\\'");
  CHECK(name_template_error("./{seed}") == "must not contain '.' path components");
  CHECK(name_template_error("a//{seed}") == "has an empty path component ('//')");
  CHECK(name_template_error("{seed}/") == "must end in a file name, not '/'");
  CHECK(name_template_error("a\tb") == "must not contain control characters");
  CHECK(name_template_error("..{seed}") == "");  // a file name that starts with dots is fine
  CHECK(name_template_error(std::string(250, 'a') + "{seed}") ==
        "a path component can be 274 bytes long; the limit is 255");
  CHECK(name_template_error("{slug:200}{slug:200}") ==
        "a path component can be 404 bytes long; the limit is 255");
}

TEST_CASE("slugify keeps ASCII words, lowercased, cut at a word boundary", "[job]") {
  CHECK(slugify("A Red Fox, in the snow!") == "a-red-fox-in-the-snow");
  CHECK(slugify("  --Hello__World--  ") == "hello-world");
  CHECK(slugify("don't stop") == "dont-stop");
  CHECK(slugify("café au lait") == "caf-au-lait");
  CHECK(slugify("日本の庭園") == "prompt");
  CHECK(slugify("") == "prompt");
  CHECK(slugify("a photograph of an astronaut riding a horse", 20) == "a-photograph-of-an");
  CHECK(slugify("supercalifragilistic expialidocious", 10) == "supercalif");
  CHECK(slugify("abc def", 4) == "abc");
  CHECK(slugify("abc", 1) == "a");
  CHECK(slugify("!!!", 3) == "pro");
  const std::string slug = slugify(std::string(10000, 'x') + " y");
  CHECK(slug.size() == kDefaultSlugLength);
}
