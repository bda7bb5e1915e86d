// fluxbatch quantize (runtime::quantize_model): the bitsandbytes serialization, byte for byte against
// the NF4 folders scripts/make_nf4_models.py made with bitsandbytes' own functions, and the folder rules.
#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/model_io/quantize_model.h"
#include "test_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cmath>

#include <filesystem>
#include <nlohmann/json.hpp>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
namespace fs = std::filesystem;

namespace {
const fs::path kModels = FLUXBATCH_MODELS_DIR;

ino_t inode(const fs::path& p) {
  struct stat st {};
  ::stat(p.c_str(), &st);
  return st.st_ino;
}

int entries_in(const fs::path& dir) {
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}
}  // namespace

TEST_CASE("python_float_repr writes floats as Python's repr", "[quantize]") {
  CHECK(runtime::python_float_repr(0.15191650390625) == "0.15191650390625");
  CHECK(runtime::python_float_repr(static_cast<double>(0.1f)) == "0.10000000149011612");
  CHECK(runtime::python_float_repr(0.1) == "0.1");
  CHECK(runtime::python_float_repr(1.0) == "1.0");
  CHECK(runtime::python_float_repr(123.5) == "123.5");
  CHECK(runtime::python_float_repr(1e15) == "1000000000000000.0");
  CHECK(runtime::python_float_repr(1e16) == "1e+16");
  CHECK(runtime::python_float_repr(1.5e16) == "1.5e+16");
  CHECK(runtime::python_float_repr(0.0001) == "0.0001");
  CHECK(runtime::python_float_repr(0.00001) == "1e-05");
  CHECK(runtime::python_float_repr(-2.5e-7) == "-2.5e-07");
  CHECK(runtime::python_float_repr(0.0) == "0.0");
}

TEST_CASE("bnb quant_state JSON as QuantState.as_dict(packed=True) packs it", "[quantize]") {
  quant::Nf4Tensor w;
  w.shape = {32, 64};
  CHECK(runtime::bnb_quant_state_json(w) ==
        R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [32, 64]})");
  w.q8 = at::empty({0}, at::kByte);
  w.offset = 0.15191650390625f;
  CHECK(runtime::bnb_quant_state_json(w) ==
        R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [32, 64], "nested_blocksize": 256, )"
        R"("nested_dtype": "float32", "nested_offset": 0.15191650390625})");
}

TEST_CASE("quantize --device cpu reproduces bitsandbytes' NF4 folders byte for byte", "[quantize]") {
  const bool dq = GENERATE(false, true);
  const fs::path reference = test::require_generated(kModels / (dq ? "tiny-flux-dev-nf4-dq" : "tiny-flux-dev-nf4"));
  const fs::path in = test::require_generated(kModels / "tiny-flux-dev");
  INFO(reference);
  test::TempDir dir;
  runtime::QuantizeOptions options;
  options.double_quant = dq;
  options.like = quant::BnbBackend::kCpu;  // the fixtures came from bitsandbytes' CPU backend
  const runtime::QuantizeReport report = runtime::quantize_model(in.string(), (dir / "out").string(), options);
  CHECK(report.linears == 50);

  // The whole safetensors file: header (names, order, offsets, padding, metadata) and every byte.
  const std::string got = test::read_file(dir / "out/transformer/diffusion_pytorch_model.safetensors");
  const std::string want = test::read_file(reference / "transformer/diffusion_pytorch_model.safetensors");
  CHECK(got.size() == want.size());
  CHECK(got == want);
  CHECK(report.transformer_bytes_out == want.size());

  // config.json: the script ran as `make_nf4_models.py --models models`, hence its _name_or_path.
  const std::string config = test::read_file(in / "transformer/config.json");
  CHECK(runtime::bnb_nf4_config_json(config, "models/tiny-flux-dev/transformer", dq) ==
        test::read_file(reference / "transformer/config.json"));
  const auto written = nlohmann::json::parse(test::read_file(dir / "out/transformer/config.json"));
  CHECK(written["_name_or_path"] == (in / "transformer").string());
  CHECK(written["quantization_config"]["bnb_4bit_use_double_quant"] == dq);

  // Everything else is IN's files, hard-linked.
  for (const char* f : {"model_index.json", "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                        "vae/diffusion_pytorch_model.safetensors", "tokenizer_2/spiece.model",
                        "scheduler/scheduler_config.json"}) {
    INFO(f);
    REQUIRE(fs::exists(dir / "out" / f));
    CHECK(test::read_file(dir / "out" / f) == test::read_file(in / f));
  }
  CHECK(inode(dir / "out/vae/diffusion_pytorch_model.safetensors") ==
        inode(in / "vae/diffusion_pytorch_model.safetensors"));
  CHECK(entries_in(dir.path()) == 1);  // no temporary folder left beside OUT
}

TEST_CASE("quantize's default CUDA rounding differs from the CPU backend's only on threshold ties", "[quantize]") {
  const fs::path in = test::require_generated(kModels / "tiny-flux-dev");
  const fs::path reference = test::require_generated(kModels / "tiny-flux-dev-nf4");
  test::TempDir dir;
  runtime::quantize_model(in.string(), (dir / "out").string(), {});
  const std::string got = test::read_file(dir / "out/transformer/diffusion_pytorch_model.safetensors");
  const std::string want = test::read_file(reference / "transformer/diffusion_pytorch_model.safetensors");
  REQUIRE(got.size() == want.size());
  size_t differing = 0;
  for (size_t i = 0; i < got.size(); ++i) differing += got[i] != want[i];
  INFO(differing << " bytes differ");
  CHECK(differing < got.size() / 1000);
}

TEST_CASE("quantize never clobbers OUT without --overwrite and replaces it whole with it", "[quantize]") {
  const fs::path in = test::require_generated(kModels / "tiny-flux-dev");
  test::TempDir dir;
  fs::create_directory(dir / "out");
  test::write_file(dir / "out/keep.txt", "mine");
  CHECK_THROWS_WITH(runtime::quantize_model(in.string(), (dir / "out").string(), {}),
                    ContainsSubstring("already exists; pass --overwrite"));
  CHECK(test::read_file(dir / "out/keep.txt") == "mine");

  runtime::QuantizeOptions options;
  options.overwrite = true;
  runtime::quantize_model(in.string(), (dir / "out").string(), options);
  CHECK_FALSE(fs::exists(dir / "out/keep.txt"));
  CHECK(fs::exists(dir / "out/transformer/diffusion_pytorch_model.safetensors"));
  CHECK(entries_in(dir.path()) == 1);

  CHECK_THROWS_AS(runtime::quantize_model(in.string(), (in / "nf4").string(), options), OutputError);
  CHECK_FALSE(fs::exists(in / "nf4"));
}

TEST_CASE("quantize refuses single files and quantized transformers, leaving nothing behind", "[quantize]") {
  test::TempDir dir;
  const fs::path bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  CHECK_THROWS_WITH(runtime::quantize_model(bfl.string(), (dir / "out").string(), {}),
                    ContainsSubstring("diffusers folders only"));
  const fs::path nf4 = test::require_generated(kModels / "tiny-flux-dev-nf4");
  CHECK_THROWS_WITH(runtime::quantize_model(nf4.string(), (dir / "out").string(), {}),
                    ContainsSubstring("already quantized (bnb-nf4)"));
  CHECK(entries_in(dir.path()) == 0);
}

TEST_CASE("quantize (CUDA rounding) writes the files diffusers' save_pretrained wrote on an H100", "[quantize]") {
  // tests/data/nf4/diffusers-gpu: models/tiny-flux-dev's transformer loaded with BitsAndBytesConfig(load_in_4bit,
  // nf4, compute bf16[, double quant]) on a GPU and saved by diffusers (scripts/make_nf4_gpu_fixtures.py).
  const bool dq = GENERATE(false, true);
  const fs::path reference = fs::path(FLUXBATCH_TEST_DATA) / "nf4" / "diffusers-gpu" / (dq ? "nf4-dq" : "nf4");
  const fs::path want_file = test::require_generated(reference / "transformer/diffusion_pytorch_model.safetensors");
  const fs::path in = test::require_generated(kModels / "tiny-flux-dev");
  INFO(reference);
  test::TempDir dir;
  runtime::QuantizeOptions options;
  options.double_quant = dq;  // like = kCuda, the default
  if (at::hasCUDA()) options.device = c10::Device(c10::kCUDA, 0);
  runtime::quantize_model(in.string(), (dir / "out").string(), options);
  const fs::path got_file = dir / "out/transformer/diffusion_pytorch_model.safetensors";
  CHECK(runtime::bnb_nf4_config_json(test::read_file(in / "transformer/config.json"),
                                     "models/tiny-flux-dev/transformer", dq) ==
        test::read_file(reference / "transformer/config.json"));
  if (!dq || at::hasCUDA()) {
    CHECK(test::read_file(got_file) == test::read_file(want_file));  // every byte, header included
    return;
  }
  // Double quantization on the CPU: bnb's offset is absmax.mean() on the GPU, whose summation order
  // can round the last bit differently. Everything else is identical; the offsets are within an ulp.
  const nn::TensorMap got = nn::read_safetensors({got_file.string()});
  const nn::TensorMap want = nn::read_safetensors({want_file.string()});
  REQUIRE(got.size() == want.size());
  int offsets_off_by_an_ulp = 0;
  for (const auto& [key, t] : want) {
    INFO(key);
    REQUIRE(got.count(key) == 1);
    const at::Tensor& g = got.at(key);
    if (g.sizes() == t.sizes() && at::equal(g, t)) continue;
    const std::string state = ".quant_state.bitsandbytes__nf4";
    if (key.size() > state.size() && key.compare(key.size() - state.size(), state.size(), state) == 0) {
      const auto text = [](const at::Tensor& b) { return std::string(static_cast<const char*>(b.data_ptr()), b.numel()); };
      const auto gj = nlohmann::json::parse(text(g)), wj = nlohmann::json::parse(text(t));
      const float go = gj["nested_offset"].get<float>(), wo = wj["nested_offset"].get<float>();
      CHECK((std::nextafter(go, wo) == wo));
      CHECK(gj.size() == wj.size());
      ++offsets_off_by_an_ulp;
      continue;
    }
    // nested_absmax = max |absmax - offset| per block moves with the offset, by an ulp at most.
    REQUIRE(key.find(".nested_absmax") != std::string::npos);
    CHECK(at::allclose(g, t, 1e-6, 0.0));
  }
  INFO(offsets_off_by_an_ulp << " offsets differ");
  CHECK(offsets_off_by_an_ulp <= 8);
}
