#include "fluxbatch/core/error.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/io/safetensors_writer.h"
#include "fluxbatch/nn/weights.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <cstring>

using Catch::Matchers::ContainsSubstring;
using fluxbatch::ModelError;
using namespace fluxbatch;

namespace {

// Adds a CPU tensor to a writer (copying its bytes).
void add(io::SafetensorsWriter& w, const std::string& name, const at::Tensor& t) {
  static const std::map<c10::ScalarType, io::DType> kTypes = {
      {c10::kFloat, io::DType::kF32},        {c10::kBFloat16, io::DType::kBF16}, {c10::kHalf, io::DType::kF16},
      {c10::kFloat8_e4m3fn, io::DType::kF8_E4M3}, {c10::kLong, io::DType::kI64}, {c10::kByte, io::DType::kU8}};
  const at::Tensor c = t.contiguous();
  w.add(name, kTypes.at(c.scalar_type()), c.sizes().vec(), c.data_ptr(), c.nbytes());
}

struct Tiny : torch::nn::Module {
  Tiny() {
    proj = register_module("proj", torch::nn::Linear(4, 3));
    scale = register_parameter("scale", at::ones({3}));
    ids = register_buffer("ids", at::zeros({2}, at::kLong));
  }
  torch::nn::Linear proj{nullptr};
  at::Tensor scale, ids;
};

}  // namespace

TEST_CASE("read_safetensors gives zero-copy views with the file's dtypes", "[weights]") {
  test::TempDir dir;
  io::SafetensorsWriter w;
  const at::Tensor a = at::arange(12, at::kFloat).reshape({3, 4});
  const at::Tensor b = at::randn({5}).to(at::kBFloat16);
  const at::Tensor f8 = at::tensor({0.5f, -1.0f, 2.0f, 448.0f}).to(at::kFloat8_e4m3fn);
  add(w, "model.a", a);
  add(w, "model.b", b);
  add(w, "model.f8", f8);
  add(w, "other", at::zeros({1}));
  const std::string path = (dir / "w.safetensors").string();
  w.write(path);

  nn::TensorMap all = nn::read_safetensors({path});
  CHECK(all.size() == 4);
  nn::TensorMap m = nn::read_safetensors({path}, "model.");
  REQUIRE(m.size() == 3);
  CHECK(at::equal(m.at("a"), a));
  CHECK(m.at("b").scalar_type() == at::kBFloat16);
  CHECK(at::equal(m.at("b"), b));
  CHECK(m.at("f8").scalar_type() == at::kFloat8_e4m3fn);
  CHECK(at::equal(m.at("f8").to(at::kFloat), at::tensor({0.5f, -1.0f, 2.0f, 448.0f})));

  // Zero copy: the tensor's data lies inside the mapping of the file.
  auto file = io::SafetensorsFile::open(path);
  at::Tensor view = nn::to_tensor(file, "model.a");
  CHECK(view.data_ptr() == static_cast<const void*>(file->at("model.a").data));
  // The view keeps the mapping alive after the last other owner lets go.
  const void* where = view.data_ptr();
  file.reset();
  CHECK(view.data_ptr() == where);
  CHECK(at::equal(view, a));
  // In-place ops hit private copy-on-write pages, never the file.
  view.add_(1);
  CHECK(at::equal(nn::read_safetensors({path}, "model.").at("a"), a));
}

TEST_CASE("misaligned spans are copied", "[weights]") {
  test::TempDir dir;
  const std::string path = (dir / "odd.safetensors").string();
  std::string header = R"({"pad": {"dtype":"U8","shape":[2],"data_offsets":[0,2]},
                           "x": {"dtype":"F32","shape":[2],"data_offsets":[2,10]}})";
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  const float values[2] = {1.5f, -3.0f};
  std::string data(2, '\x07');
  data.append(reinterpret_cast<const char*>(values), 8);
  io::write_raw_safetensors(path, header, data);
  auto file = io::SafetensorsFile::open(path);
  const at::Tensor x = nn::to_tensor(file, "x");
  CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 == 0);
  CHECK(x.data_ptr() != static_cast<const void*>(file->at("x").data));
  CHECK(at::equal(x, at::tensor({1.5f, -3.0f})));
}

TEST_CASE("sharded components read through the index and refuse duplicates", "[weights]") {
  test::TempDir dir;
  io::SafetensorsWriter s1, s2;
  add(s1, "a.weight", at::ones({2}));
  add(s2, "b.weight", at::full({3}, 2.0f));
  s1.write((dir / "m-00001-of-00002.safetensors").string());
  s2.write((dir / "m-00002-of-00002.safetensors").string());
  const std::string index = (dir / "m.safetensors.index.json").string();
  test::write_file(index, R"({"metadata": {"total_size": 20}, "weight_map": {
      "a.weight": "m-00001-of-00002.safetensors", "b.weight": "m-00002-of-00002.safetensors"}})");
  nn::TensorMap m = nn::read_safetensors({index});
  REQUIRE(m.size() == 2);
  CHECK(at::equal(m.at("b.weight"), at::full({3}, 2.0f)));

  SECTION("an index entry that lies") {
    test::write_file(index, R"({"weight_map": {"a.weight": "m-00002-of-00002.safetensors",
                                               "b.weight": "m-00002-of-00002.safetensors"}})");
    CHECK_THROWS_WITH(nn::read_safetensors({index}),
                      ContainsSubstring("'a.weight' is listed in") && ContainsSubstring("m-00002-of-00002"));
  }
  SECTION("an index without weight_map") {
    test::write_file(index, R"({"metadata": {}})");
    CHECK_THROWS_WITH(nn::read_safetensors({index}), ContainsSubstring("no \"weight_map\""));
  }
  SECTION("a shard outside the folder") {
    test::write_file(index, R"({"weight_map": {"a.weight": "../x.safetensors"}})");
    CHECK_THROWS_WITH(nn::read_safetensors({index}), ContainsSubstring("not a file beside the index"));
  }
  SECTION("the same tensor in two files") {
    CHECK_THROWS_WITH(nn::read_safetensors({(dir / "m-00001-of-00002.safetensors").string(),
                                            (dir / "m-00001-of-00002.safetensors").string()}),
                      ContainsSubstring("'a.weight' is in both"));
  }
}

TEST_CASE("load_state copies by name and converts dtype", "[weights]") {
  Tiny tiny;
  nn::TensorMap w;
  w["proj.weight"] = at::arange(12, at::kFloat).reshape({3, 4}).to(at::kBFloat16);
  w["proj.bias"] = at::tensor({1.0f, 2.0f, 3.0f}).to(at::kBFloat16);
  w["scale"] = at::tensor({0.5f, 0.25f, 0.125f});
  w["ids"] = at::tensor({7, 9}, at::kLong);
  w["extra.unused"] = at::zeros({1});

  nn::LoadOptions options;
  options.dtype = at::kFloat;
  options.ignore_prefixes = {"extra."};
  nn::load_state(tiny, w, options);
  CHECK(tiny.proj->weight.scalar_type() == at::kFloat);
  CHECK(at::equal(tiny.proj->weight, at::arange(12, at::kFloat).reshape({3, 4})));
  CHECK(at::equal(tiny.proj->bias, at::tensor({1.0f, 2.0f, 3.0f})));
  CHECK(at::equal(tiny.scale, at::tensor({0.5f, 0.25f, 0.125f})));
  CHECK(tiny.ids.scalar_type() == at::kLong);
  CHECK(at::equal(tiny.ids, at::tensor({7, 9}, at::kLong)));
  // The forward sees the new weights.
  const at::Tensor y = tiny.proj->forward(at::ones({1, 4}));
  CHECK(at::allclose(y, at::tensor({1.0f + 6, 2.0f + 22, 3.0f + 38}).reshape({1, 3})));

  options.dtype = at::kBFloat16;
  nn::load_state(tiny, w, options);
  CHECK(tiny.proj->weight.scalar_type() == at::kBFloat16);
  CHECK(tiny.ids.scalar_type() == at::kLong);
}

TEST_CASE("load_state reports every mismatch in one error", "[weights]") {
  Tiny tiny;
  nn::TensorMap w;
  w["proj.weight"] = at::zeros({3, 5});  // shape mismatch
  w["scale"] = at::zeros({3});
  w["stray.a"] = at::zeros({1});          // unexpected
  nn::LoadOptions options;
  options.what = "tiny (models/t)";
  try {
    nn::load_state(tiny, w, options);
    FAIL("no error");
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, ContainsSubstring("tiny (models/t): the checkpoint does not match the model (2 missing, "
                                      "1 unexpected, 1 with a different shape)"));
    CHECK_THAT(msg, ContainsSubstring("missing: proj.bias [3]"));
    CHECK_THAT(msg, ContainsSubstring("missing: ids [2]"));
    CHECK_THAT(msg, ContainsSubstring("unexpected: stray.a [1]"));
    CHECK_THAT(msg, ContainsSubstring("shape mismatch: proj.weight: checkpoint [3, 5], model [3, 4]"));
  }
  // The module is untouched when the check fails.
  CHECK(tiny.proj->weight.sizes() == at::IntArrayRef({3, 4}));

  SECTION("long lists are cut after 10 with a count") {
    for (int i = 0; i < 15; ++i) w["stray.k" + std::to_string(i)] = at::zeros({1});
    CHECK_THROWS_WITH(nn::load_state(tiny, w, options), ContainsSubstring("... and 9 more") &&
                                                            ContainsSubstring("16 unexpected"));
  }
}

TEST_CASE("load_state fills tensors allocated where they run in place", "[weights]") {
  Tiny tiny;
  const void* before = tiny.proj->weight.data_ptr();
  nn::TensorMap w;
  w["proj.weight"] = at::ones({3, 4}).to(at::kBFloat16);
  w["proj.bias"] = at::zeros({3});
  w["scale"] = at::ones({3});
  w["ids"] = at::tensor({1, 2}, at::kLong);
  nn::load_state(tiny, w, nn::LoadOptions{});
  CHECK(tiny.proj->weight.data_ptr() == before);
  CHECK(at::equal(tiny.proj->weight, at::ones({3, 4})));
  // Checkpoint views are never aliased by the module: later in-place updates do not reach them.
  {
    c10::NoGradGuard no_grad;
    tiny.scale.mul_(2);
  }
  CHECK(at::equal(w["scale"], at::ones({3})));
}
