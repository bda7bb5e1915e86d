#include "fluxbatch/core/error.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/io/safetensors_writer.h"
#include "test_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstring>
#include <random>

using Catch::Matchers::ContainsSubstring;
using fluxbatch::ModelError;
using namespace fluxbatch::io;

namespace {

std::string bytes_of(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// Writes a raw file and returns the message of the ModelError that opening it raises.
std::string open_error(const fluxbatch::test::TempDir& dir, const std::string& header, const std::string& data,
                       int64_t header_length = -1) {
  const std::string path = (dir / "bad.safetensors").string();
  write_raw_safetensors(path, header, data, header_length);
  try {
    SafetensorsFile::open(path);
  } catch (const ModelError& e) {
    // The header-only reader must agree with the mapping reader.
    try {
      read_safetensors_header(path);
    } catch (const ModelError& e2) {
      CHECK(std::string(e2.what()) == e.what());
      return e.what();
    }
    FAIL("read_safetensors_header accepted what open() refused: " << e.what());
  }
  FAIL("no ModelError for header " << header);
  return "";
}

}  // namespace

TEST_CASE("writer and reader round-trip every dtype and the metadata", "[safetensors]") {
  fluxbatch::test::TempDir dir;
  SafetensorsWriter writer;
  const std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 5.0f, 6.0f};
  writer.add("a.f32", DType::kF32, {2, 3}, f32.data(), 24);
  const std::vector<DType> all = {DType::kF64, DType::kF16,  DType::kBF16, DType::kF8_E4M3, DType::kF8_E5M2,
                                  DType::kI64, DType::kI32,  DType::kI16,  DType::kI8,      DType::kU8,
                                  DType::kBool, DType::kU16, DType::kU32,  DType::kU64};
  std::vector<uint8_t> pattern(3 * 8);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + 1);
  for (DType dtype : all) {
    writer.add(std::string("b.") + dtype_name(dtype), dtype, {3}, pattern.data(), 3 * dtype_size(dtype));
  }
  writer.add("c.scalar", DType::kF32, {}, f32.data(), 4);
  writer.add("d.empty", DType::kBF16, {0, 4}, nullptr, 0);
  writer.set_metadata("format", "pt");
  const std::string path = (dir / "t.safetensors").string();
  writer.write(path);

  auto file = SafetensorsFile::open(path);
  REQUIRE(file->tensors().size() == all.size() + 3);
  CHECK(file->metadata().at("format") == "pt");
  CHECK(file->data_offset() % 8 == 0);
  const TensorView& a = file->at("a.f32");
  CHECK(a.dtype == DType::kF32);
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.numel() == 6);
  REQUIRE(a.nbytes == 24);
  CHECK(std::memcmp(a.data, f32.data(), 24) == 0);
  for (DType dtype : all) {
    const TensorView& v = file->at(std::string("b.") + dtype_name(dtype));
    CHECK(v.dtype == dtype);
    CHECK(v.nbytes == 3 * dtype_size(dtype));
    CHECK(std::memcmp(v.data, pattern.data(), v.nbytes) == 0);
  }
  CHECK(file->at("c.scalar").shape.empty());
  CHECK(file->at("c.scalar").numel() == 1);
  CHECK(file->at("d.empty").numel() == 0);
  CHECK(file->find("nope") == nullptr);
  CHECK_THROWS_WITH(file->at("nope"), ContainsSubstring("no tensor named 'nope'") && ContainsSubstring(path));
  // Sorted by name.
  for (size_t i = 1; i < file->tensors().size(); ++i) {
    CHECK(file->tensors()[i - 1].name < file->tensors()[i].name);
  }
  const SafetensorsHeader header = read_safetensors_header(path);
  CHECK(header.tensors.size() == file->tensors().size());
  CHECK(header.data_offset == file->data_offset());
}

TEST_CASE("dtype names follow the file spelling", "[safetensors]") {
  DType d;
  CHECK(parse_dtype("F8_E4M3", &d));
  CHECK(d == DType::kF8_E4M3);
  CHECK(std::string(dtype_name(DType::kBool)) == "BOOL");
  CHECK(dtype_size(DType::kBF16) == 2);
  CHECK_FALSE(parse_dtype("f32", &d));
  CHECK_FALSE(parse_dtype("F4", &d));
}

TEST_CASE("writer refuses inconsistent tensors", "[safetensors]") {
  SafetensorsWriter writer;
  const float x[2] = {1, 2};
  CHECK_THROWS_WITH(writer.add("x", DType::kF32, {3}, x, 8), ContainsSubstring("'x'") && ContainsSubstring("12"));
  writer.add("x", DType::kF32, {2}, x, 8);
  CHECK_THROWS_WITH(writer.add("x", DType::kF32, {2}, x, 8), ContainsSubstring("added twice"));
  CHECK_THROWS_AS(writer.add("__metadata__", DType::kF32, {2}, x, 8), ModelError);
}

TEST_CASE("hostile files give a ModelError naming the file and tensor", "[safetensors]") {
  fluxbatch::test::TempDir dir;
  const std::string path = (dir / "bad.safetensors").string();
  const std::string data8 = bytes_of({1.0f, 2.0f});

  SECTION("shorter than 8 bytes") {
    write_raw_safetensors(path, "", "", -1);  // 8 bytes of length 0 ...
    fluxbatch::test::write_file(path, "abc");
    CHECK_THROWS_WITH(SafetensorsFile::open(path), ContainsSubstring(path) && ContainsSubstring("not a safetensors"));
    CHECK_THROWS_WITH(read_safetensors_header(path), ContainsSubstring("not a safetensors"));
  }
  SECTION("missing file") {
    CHECK_THROWS_WITH(SafetensorsFile::open((dir / "none.safetensors").string()),
                      ContainsSubstring("none.safetensors") && ContainsSubstring("cannot open"));
  }
  SECTION("header length past the file") {
    CHECK_THAT(open_error(dir, "{}", "", 1000), ContainsSubstring(path) && ContainsSubstring("past the end of the file"));
  }
  SECTION("absurd header length") {
    CHECK_THAT(open_error(dir, "{}", "", int64_t{1} << 40), ContainsSubstring("absurd"));
    CHECK_THAT(open_error(dir, "{}", "", -2), ContainsSubstring("absurd"));  // 2^64 - 2
  }
  SECTION("a tensor name with a control character (a NUL would cut every message short)") {
    CHECK_THAT(open_error(dir, R"({"a\u0000b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", data8),
               ContainsSubstring(path + ": tensor name \"a\\u0000b\" holds a control character"));
  }
  SECTION("bad JSON") {
    CHECK_THAT(open_error(dir, "{\"a\": ", ""), ContainsSubstring(path) && ContainsSubstring("not valid JSON"));
    CHECK_THAT(open_error(dir, "", ""), ContainsSubstring("not valid JSON"));
    CHECK_THAT(open_error(dir, "[1, 2]", ""), ContainsSubstring("not a JSON object"));
    CHECK_THAT(open_error(dir, "{\"a\": \"\xff\xfe\"}", ""), ContainsSubstring("not valid JSON"));
  }
  SECTION("duplicate tensor names") {
    const std::string entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    CHECK_THAT(open_error(dir, "{\"w\":" + entry + ",\"w\":" + entry + "}", data8),
               ContainsSubstring("tensor 'w' appears twice"));
  }
  SECTION("non-object entry") {
    CHECK_THAT(open_error(dir, R"({"w": [1, 2]})", ""),
               ContainsSubstring(path) && ContainsSubstring("tensor 'w'") && ContainsSubstring("not an object"));
  }
  SECTION("missing and wrong-typed fields") {
    CHECK_THAT(open_error(dir, R"({"w": {"shape":[2],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("missing field 'dtype'"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","data_offsets":[0,8]}})", data8),
               ContainsSubstring("missing field 'shape'"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[2]}})", data8),
               ContainsSubstring("missing field 'data_offsets'"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":7,"shape":[2],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("'dtype' is not a string"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":"2","data_offsets":[0,8]}})", data8),
               ContainsSubstring("'shape' is not an array"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("non-integer"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8),
               ContainsSubstring("'data_offsets' is not two non-negative integers"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", data8),
               ContainsSubstring("'data_offsets' is not two non-negative integers"));
  }
  SECTION("metadata that is not a string map") {
    CHECK_THAT(open_error(dir, R"({"__metadata__": {"a": 1}})", ""),
               ContainsSubstring("__metadata__ entry 'a' is not a string"));
    CHECK_THAT(open_error(dir, R"({"__metadata__": "x"})", ""), ContainsSubstring("__metadata__ is not an object"));
  }
  SECTION("unknown dtype") {
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("unknown dtype \"F4\""));
  }
  SECTION("negative or overflowing shapes") {
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("negative"));
    CHECK_THAT(
        open_error(dir, R"({"w": {"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", data8),
        ContainsSubstring("tensor 'w'") && ContainsSubstring("overflows"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("overflows"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("overflows"));
  }
  SECTION("offsets out of range") {
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8),
               ContainsSubstring(path) && ContainsSubstring("tensor 'w'") &&
                   ContainsSubstring("past the end of the data section (8 bytes)"));
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
                          data8),
               ContainsSubstring("past the end of the data section"));
  }
  SECTION("begin > end") {
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("begin 8 > end 4"));
  }
  SECTION("overlapping spans") {
    CHECK_THAT(open_error(dir,
                          R"({"a": {"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                              "b": {"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          data8),
               ContainsSubstring("tensor 'b'") && ContainsSubstring("overlap tensor 'a'"));
  }
  SECTION("shape x dtype size != span") {
    CHECK_THAT(open_error(dir, R"({"w": {"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", data8),
               ContainsSubstring("tensor 'w'") && ContainsSubstring("4 bytes but data_offsets span 8 bytes"));
  }
}

TEST_CASE("gaps between spans and padded headers are fine", "[safetensors]") {
  fluxbatch::test::TempDir dir;
  const std::string path = (dir / "gap.safetensors").string();
  const std::string data = bytes_of({1.0f, 2.0f, 3.0f, 4.0f});
  write_raw_safetensors(path,
                        R"({"b": {"dtype":"F32","shape":[1],"data_offsets":[12,16]},
                            "a": {"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                            "z": {"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                            "extra": {"dtype":"U8","shape":[0],"data_offsets":[2,2]}}     )",
                        data);
  auto file = SafetensorsFile::open(path);
  REQUIRE(file->tensors().size() == 4);
  float value = 0;
  std::memcpy(&value, file->at("b").data, 4);
  CHECK(value == 4.0f);
  std::memcpy(&value, file->at("a").data, 4);
  CHECK(value == 1.0f);
}

TEST_CASE("parse_safetensors_header never reads past the buffer it is given", "[safetensors]") {
  const std::string bytes = raw_safetensors_bytes(R"({"w": {"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                                  std::string(4, '\0'));
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const SafetensorsHeader header = parse_safetensors_header(p, bytes.size(), bytes.size());
  REQUIRE(header.tensors.size() == 1);
  CHECK(header.tensors[0].end == 4);
  // Truncated buffers of every length fail cleanly.
  for (size_t n = 0; n + 4 < bytes.size(); ++n) {
    CHECK_THROWS_AS(parse_safetensors_header(p, n, bytes.size()), ModelError);
  }
  // A file size smaller than the data claimed.
  CHECK_THROWS_WITH(parse_safetensors_header(p, bytes.size() - 4, bytes.size() - 4, "mem"),
                    ContainsSubstring("mem: tensor 'w'"));
}

TEST_CASE("random byte mutations of a header give a result or a ModelError, never a crash", "[safetensors]") {
  SafetensorsWriter writer;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  writer.add("a", DType::kF32, {2, 3}, values.data(), 24);
  writer.add("b.bias", DType::kBF16, {4}, values.data(), 8);
  writer.set_metadata("format", "pt");
  const std::string good = writer.serialize();
  std::mt19937 rng(1234);
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % std::min<size_t>(bytes.size(), 8 + 200);
      bytes[at] = static_cast<char>(rng() % 256);
    }
    try {
      const auto header = parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                                   bytes.size());
      for (const auto& t : header.tensors) REQUIRE(t.end <= bytes.size() - header.data_offset);
      ++accepted;
    } catch (const ModelError&) {
    }
  }
  CHECK(accepted < 3000);
}
