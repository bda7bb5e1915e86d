// `fluxbatch quantize IN OUT.safetensors --to fp8` (runtime::export_fp8_transformer) on the tiny dev model: the
// file is ComfyUI's scaled-fp8 layout, checked against scripts/make_fp8_fixtures.py's scaled file (made in
// Python from the same weights), and it renders from a single-files folder.
#include "fluxbatch/core/error.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/model_io/fp8_export.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "test_support.h"
#include "tiny_render.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <string>

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

}  // namespace

TEST_CASE("quantize --to fp8 writes ComfyUI's scaled-fp8 layout: the blocks' Linears bit for bit as the Python "
          "fixture's, the rest bf16 as the BFL file",
          "[fp8file][quantize]") {
  const fs::path dev = test::require_generated(kModels / "tiny-flux-dev");
  const fs::path bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const fs::path scaled_dir = test::require_generated(kModels / "tiny-flux-dev-fp8-scaled");
  test::TempDir tmp;
  const fs::path out = tmp / "flux1-dev-fp8-scaled.safetensors";
  const runtime::Fp8ExportReport report = runtime::export_fp8_transformer(dev.string(), out.string(), false);

  const nn::TensorMap ours = nn::read_safetensors({out.string()});
  const nn::TensorMap python = nn::read_safetensors({(scaled_dir / "flux1-dev-fp8-scaled.safetensors").string()});
  const nn::TensorMap bfl = nn::read_safetensors({(bfl_dir / "flux1-tiny-dev.safetensors").string()});
  REQUIRE(ours.count("scaled_fp8"));
  CHECK(ours.at("scaled_fp8").scalar_type() == at::kFloat8_e4m3fn);
  CHECK(ours.at("scaled_fp8").numel() == 0);
  int64_t fp8 = 0, scales = 0;
  for (const auto& [name, t] : ours) {
    INFO(name);
    if (name == "scaled_fp8") continue;
    const bool block = starts_with(name, "double_blocks.") || starts_with(name, "single_blocks.");
    if (t.scalar_type() == at::kFloat8_e4m3fn) {
      // The fixture's scaled() stores round(w / (max|w| / 448)) too: the same bytes.
      CHECK(block);
      ++fp8;
      REQUIRE(python.count(name));
      CHECK(at::equal(t.view(at::kByte), python.at(name).view(at::kByte)));
      CHECK(t.sizes() == bfl.at(name).sizes());
    } else if (ends_with(name, ".scale_weight")) {
      ++scales;
      CHECK(block);
      CHECK(t.dim() == 0);
      CHECK(t.scalar_type() == at::kFloat);
      REQUIRE(python.count(name));
      CHECK(at::equal(t, python.at(name)));
    } else {
      // Embedders, final layer, biases, norm scales: the BFL file's bf16 tensors as they are.
      CHECK(t.scalar_type() == at::kBFloat16);
      REQUIRE(bfl.count(name));
      CHECK(at::equal(t, bfl.at(name)));
    }
  }
  CHECK(fp8 == report.fp8_linears);
  CHECK(scales == fp8);
  // Every 2-D weight of the blocks is fp8, and every BFL tensor is there.
  int64_t block_linears = 0;
  for (const auto& [name, t] : bfl) {
    INFO(name);
    CHECK(ours.count(name));
    if ((starts_with(name, "double_blocks.") || starts_with(name, "single_blocks.")) && t.dim() == 2) ++block_linears;
  }
  CHECK(fp8 == block_linears);
  CHECK(fp8 > 0);
  CHECK(report.bytes_out == fs::file_size(out));
}

TEST_CASE("a quantize --to fp8 file renders from a single-files folder close to the bf16 model it came from",
          "[fp8file][quantize]") {
  const fs::path dev = test::require_generated(kModels / "tiny-flux-dev");
  const fs::path bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  test::TempDir tmp;
  const fs::path folder = tmp / "single";
  fs::create_directory(folder);
  for (const char* f : {"ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors", "tokenizer", "tokenizer_2"}) {
    fs::create_symlink(bfl_dir / f, folder / f);
  }
  runtime::export_fp8_transformer(dev.string(), (folder / "flux1-dev-fp8-scaled.safetensors").string(), false);
  const runtime::ModelFiles files = runtime::locate_model(folder.string());
  CHECK(files.transformer.dialect == models::KeyDialect::kBfl);
  CHECK(files.transformer.quantization == "scaled-fp8");

  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  const at::Tensor fp8 = test::render_tiny(folder.string(), options);
  const at::Tensor bf16 = test::render_tiny(dev.string(), options);
  REQUIRE(fp8.sizes() == bf16.sizes());
  // e4m3 keeps 3 mantissa bits: the image moves, but stays the same image (a wrong scale or a row mix-up
  // gives noise with errors of the size of the image itself).
  const double err = ((fp8 - bf16).norm() / bf16.norm()).item<double>();
  INFO("relative L2 " << err);
  CHECK(err > 0.0);
  CHECK(err < 0.1);
}

TEST_CASE("quantize --to fp8 refuses what it cannot write and never replaces a file unasked", "[fp8file][quantize]") {
  const fs::path dev = test::require_generated(kModels / "tiny-flux-dev");
  test::TempDir tmp;
  CHECK_THROWS_WITH(runtime::export_fp8_transformer(dev.string(), (tmp / "out").string(), false),
                    ContainsSubstring("name OUT <something>.safetensors"));
  const fs::path out = tmp / "x.safetensors";
  test::write_file(out, "keep me");
  CHECK_THROWS_WITH(runtime::export_fp8_transformer(dev.string(), out.string(), false),
                    ContainsSubstring("already exists; pass --overwrite"));
  CHECK(test::read_file(out) == "keep me");
  CHECK_THROWS_AS(runtime::export_fp8_transformer(dev.string(), (dev / "inside.safetensors").string(), true),
                  OutputError);
  CHECK_FALSE(fs::exists(dev / "inside.safetensors"));
  // A single-files folder is not a dense diffusers folder.
  const fs::path bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  CHECK_THROWS_AS(runtime::export_fp8_transformer(bfl_dir.string(), out.string(), true), ModelError);
  runtime::export_fp8_transformer(dev.string(), out.string(), true);
  CHECK(test::read_file(out) != "keep me");
}
