// Speed and fidelity of one FluxTransformer2DModel forward on the GPU, against diffusers on the same weights
// and inputs. Not a test: scripts/bench/run_h100.sh runs it after scripts/bench/diffusers_reference.py
// wrote REF (the inputs, diffusers' bf16 output and, with an NF4 folder, diffusers + bitsandbytes' NF4 output).
//   fluxbatch_bench_transformer MODEL_DIR REF.safetensors [--nf4 NF4_DIR] [--reps N] [--json OUT.json] [--fp8-only 1]
// (--fp8-only 1: the fp8 figures, NF4 + fp8, and the fidelity of bf16, fp8, NF4 and NF4 + fp8, for a short call;
// --fp8-layouts 0: without the single blocks' other two layouts.)
// For 1024x1024 batch 1 (REF's inputs), 512x512 batch 4 (random inputs) and a 4-step schnell-shaped
// denoise, it prints the median forward time in three configurations measured in the same process:
// reference kernels (diffusers' ATen ops: the "before"), fused kernels, and fused kernels replayed as a CUDA
// graph; the kernel time split into GEMM / attention / everything else (torch's profiler) with the largest
// other kernels; and the relative L2 error against an fp32 forward of the same weights (TF32 off), for
// fluxbatch and for diffusers. On fp8 cards the same for --compute fp8 (per-channel e4m3 weights from the bf16
// file, and from the NF4 file both resident and converted at each call). The figures also go to --json for docs/benchmarks/<card>.json.
#include "bench_common.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/fp8_state.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/ops/fp8_attention.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fluxbatch/ops/nf4_dequantize.h"
#include "fluxbatch/runtime/execution/graphed_denoiser.h"
#include "fluxbatch/sampling/latents.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace fluxbatch;
using models::flux::FluxConfig;
using models::flux::FluxTransformer2DModel;

namespace {

bench::Figures figure;  // name -> value, written to --json

using bench::forward;
using bench::Inputs;
using bench::median_ms;
using bench::random_inputs;
using bench::safetensors_in;
using bench::seconds_since;

double gib(int64_t bytes) { return static_cast<double>(bytes) / double(1 << 30); }

double rel_l2(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU).to(at::kDouble), y = b.to(at::kCPU).to(at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

Inputs from_reference(const nn::TensorMap& ref, bool guidance) {
  auto in = [&](const char* name) { return ref.at(name).to(at::kCUDA); };
  return {in("hidden_states"), in("encoder_hidden_states"), in("pooled_projections"), in("timestep"),
          in("img_ids"),       in("txt_ids"),               guidance ? in("guidance") : at::Tensor()};
}

// The model step as the sampler sees it, so the CUDA graph path is the one render uses.
class Step : public sampling::Denoiser {
 public:
  Step(const FluxTransformer2DModel& model, const Inputs& in) : model_(model), in_(in) {}
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override {
    return model_->forward(latents, in_.encoder, in_.pooled, timestep, in_.img_ids, in_.txt_ids, in_.guidance);
  }

 private:
  const FluxTransformer2DModel& model_;
  const Inputs& in_;
};

// Kernel time of one call by category, from torch's (Kineto) profiler.
struct Split {
  double gemm = 0, attention = 0, other = 0;
  std::map<std::string, std::pair<double, int>> others, gemms;  // kernel name -> (ms, launches)
  double total() const { return gemm + attention + other; }
};

std::string category(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), ::tolower);
  for (const char* key : {"fmha", "flash", "sdpa", "attention", "cudnn"}) {
    if (n.find(key) != std::string::npos) return "attention";
  }
  for (const char* key : {"gemm", "nvjet", "xmma", "cutlass", "gemv"}) {
    if (n.find(key) != std::string::npos) return "gemm";
  }
  return "other";
}

Split profile(const std::function<void()>& fn) {
  using namespace torch::profiler::impl;
  fn();
  c10::cuda::device_synchronize();
  const ProfilerConfig config(ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  fn();
  c10::cuda::device_synchronize();
  const auto result = torch::autograd::profiler::disableProfiler();
  Split split;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    const double ms = static_cast<double>(e.durationNs()) / 1e6;
    const std::string kind = category(e.name());
    if (kind == "gemm") {
      split.gemm += ms;
      auto& slot = split.gemms[e.name()];
      slot.first += ms;
      slot.second += 1;
    } else if (kind == "attention") {
      split.attention += ms;
    } else {
      split.other += ms;
      auto& slot = split.others[e.name()];
      slot.first += ms;
      slot.second += 1;
    }
  }
  return split;
}

void print_split(const std::string& label, const Split& s, const std::string& key) {
  std::printf("  %s kernel time %.1f ms: GEMM %.1f ms (%.0f%%), attention %.1f ms (%.0f%%), other %.1f ms (%.0f%%)\n",
              label.c_str(), s.total(), s.gemm, 100 * s.gemm / s.total(), s.attention, 100 * s.attention / s.total(),
              s.other, 100 * s.other / s.total());
  auto print_top = [](const std::map<std::string, std::pair<double, int>>& kernels, size_t n) {
    std::vector<std::pair<double, std::string>> top;
    for (const auto& [name, v] : kernels) top.emplace_back(v.first, name);
    std::sort(top.rbegin(), top.rend());
    for (size_t i = 0; i < top.size() && i < n; ++i) {
      const auto& v = kernels.at(top[i].second);
      std::printf("      %7.2f ms %5d x  %.110s\n", v.first, v.second, top[i].second.c_str());
    }
  };
  std::printf("    largest GEMM kernels:\n");
  print_top(s.gemms, 5);
  std::printf("    largest other kernels:\n");
  print_top(s.others, 10);
  figure(key + "_kernel_gemm_ms", s.gemm);
  figure(key + "_kernel_attention_ms", s.attention);
  figure(key + "_kernel_other_ms", s.other);
}

// The profile is a diagnosis, not a figure the run needs: a profiler that cannot start (no CUPTI) is reported.
void try_profile(const std::string& label, const std::string& key, const std::function<void()>& fn) {
  try {
    print_split(label, profile(fn), key);
  } catch (const std::exception& e) {
    std::printf("  %s: profiler unavailable (%s)\n", label.c_str(), e.what());
  }
}

struct Timings {
  double reference = 0, fused = 0, graph = 0;
};

// The three configurations on the same model and inputs, and the profile of the first two.
Timings time_configurations(const std::string& label, const std::string& key, const FluxTransformer2DModel& model,
                            const Inputs& in, int reps, bool with_profile, bool with_reference = true) {
  Timings t;
  double peak_ref = 0, peak_fused = 0;
  // fp8's "reference" is its fp32 CPU arithmetic run on the GPU (fp32 GEMMs): not a speed baseline.
  if (with_reference) {
    const ops::KernelModeGuard mode(ops::KernelMode::kReference);
    t.reference = median_ms([&] { forward(model, in); }, reps, &peak_ref);
    if (with_profile) try_profile(label + " reference", key + "_reference", [&] { forward(model, in); });
  }
  t.fused = median_ms([&] { forward(model, in); }, reps, &peak_fused);
  if (with_profile) try_profile(label + " fused", key, [&] { forward(model, in); });
  Step step(model, in);
  runtime::execution::GraphedDenoiser graphed(step, true, label, 1 << 20);
  t.graph = median_ms([&] { graphed.predict(in.hidden, in.timestep); }, reps);
  std::printf("%s forward: reference kernels %.1f ms (peak +%.2f GiB), fused %.1f ms (peak +%.2f GiB), fused + CUDA "
              "graph %.1f ms (%d replays; capture %.1f ms); fused+graph is %.2fx the reference\n",
              label.c_str(), t.reference, peak_ref, t.fused, peak_fused, t.graph, graphed.replays(),
              graphed.capture_ms(), with_reference ? t.reference / t.graph : 0.0);
  figure(key + "_graph_capture_ms", graphed.capture_ms());
  if (graphed.replays() == 0) std::printf("  WARNING: the CUDA graph was not used (capture failed; see the log)\n");
  if (with_reference) figure(key + "_reference_ms", t.reference);
  figure(key + "_eager_ms", t.fused);
  figure(key + "_ms", t.graph);
  if (with_reference) figure(key + "_reference_peak_extra_gib", peak_ref);
  figure(key + "_peak_extra_gib", peak_fused);
  return t;
}

// Gives every single block's q / k / v / MLP Linear tensors of its own, so no joined GEMM runs (the layout
// SingleBlockImpl::join_fp8_projections makes is gone).
void separate_projections(FluxTransformer2DModel& model) {
  for (const models::flux::SingleBlock& b : model->single_transformer_blocks) {
    for (nn::Linear l : {b->attn->to_q, b->attn->to_k, b->attn->to_v, b->proj_mlp}) l->own_fp8_storage();
  }
}

FluxTransformer2DModel load_dense(const FluxConfig& config, const std::vector<std::string>& files, at::ScalarType dtype) {
  const auto t0 = std::chrono::steady_clock::now();
  FluxTransformer2DModel model(config, at::TensorOptions().dtype(dtype).device(at::kCUDA));
  nn::LoadOptions load;
  load.dtype = dtype;
  load.device = at::Device(at::kCUDA);
  load.what = "transformer";
  nn::load_state(*model, nn::read_safetensors(files), load);
  c10::cuda::device_synchronize();
  std::printf("loaded the %s transformer in %.1f s (%.2f GiB on the GPU)\n", c10::toString(dtype), seconds_since(t0),
              gib(bench::allocated_now()));
  return model;
}

// fp32 forward in the reference kernels with TF32 off: the fidelity yardstick.
at::Tensor fp32_forward(const FluxTransformer2DModel& model, const Inputs& in) {
  const ops::KernelModeGuard mode(ops::KernelMode::kReference);
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
  Inputs wide = in;
  for (at::Tensor* t : {&wide.hidden, &wide.encoder, &wide.pooled, &wide.timestep, &wide.img_ids, &wide.txt_ids}) {
    *t = t->to(at::kFloat);
  }
  return forward(model, wide).to(at::kCPU);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR REF.safetensors [--nf4 DIR] [--reps N] [--json OUT]\n", argv[0]);
    return 2;
  }
  const fs::path model_dir = argv[1];
  const std::string ref_path = argv[2];
  std::string nf4_dir, json_path;
  int reps = 10;
  bool fp8_only = false, fp8_layouts = true;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--nf4") nf4_dir = argv[i + 1];
    else if (flag == "--reps") reps = std::stoi(argv[i + 1]);
    else if (flag == "--json") json_path = argv[i + 1];
    else if (flag == "--fp8-only") fp8_only = std::string(argv[i + 1]) == "1";
    else if (flag == "--fp8-layouts") fp8_layouts = std::string(argv[i + 1]) == "1";
  }
  try {
    c10::InferenceMode guard;
    const FluxConfig config = FluxConfig::from_json_file((model_dir / "transformer" / "config.json").string());
    const std::vector<std::string> files = safetensors_in(model_dir / "transformer");
    const nn::TensorMap ref = nn::read_safetensors({ref_path});
    const Inputs in = from_reference(ref, config.guidance_embeds);
    const at::Tensor diffusers_bf16 = ref.at("output").to(at::kFloat);

    // ---- bf16: the three configurations at 1024^2 batch 1 and 512^2 batch 4 ----
    at::Tensor out_bf16, out_bf16_reference;
    {
      FluxTransformer2DModel model = load_dense(config, files, at::kBFloat16);
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kReference);
        out_bf16_reference = forward(model, in).to(at::kCPU).to(at::kFloat);
      }
      out_bf16 = forward(model, in).to(at::kCPU).to(at::kFloat);
      std::printf("reference kernels vs diffusers bf16: relative L2 %.3e (0 = bit-identical)\n",
                  rel_l2(out_bf16_reference, diffusers_bf16));
      figure("rel_l2_reference_kernels_vs_diffusers_bf16", rel_l2(out_bf16_reference, diffusers_bf16));
      if (!fp8_only) time_configurations("1024x1024 batch 1 bf16", "forward_1024_b1_bf16", model, in, reps, true);
      if (!fp8_only) {
        const Inputs small = random_inputs(config, 512, 4, in.encoder.size(1), at::kBFloat16);
        time_configurations("512x512 batch 4 bf16", "forward_512_b4_bf16", model, small, reps, true);
      }
      if (!fp8_only) {
        const Inputs tiny = random_inputs(config, 256, 1, in.encoder.size(1), at::kBFloat16);
        time_configurations("256x256 batch 1 bf16", "forward_256_b1_bf16", model, tiny, reps, false);
      }
    }
    c10::cuda::CUDACachingAllocator::emptyCache();

    // ---- the card's GEMM rate at a FLUX shape, in a short burst and sustained (clocks drop under load) ----
    if (!fp8_only) {
      const auto opt = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
      const at::Tensor a = at::randn({4608, 3072}, opt), w = at::randn({12288, 3072}, opt);
      at::Tensor c = at::empty({4608, 12288}, opt);
      const double tflop = 2.0 * 4608 * 3072 * 12288 / 1e12;
      auto rate = [&](int iters) {
        return median_ms(
            [&] {
              for (int i = 0; i < iters; ++i) at::mm_out(c, a, w.t());
            },
            3) / iters;
      };
      const double burst = rate(5), sustained = rate(400);
      std::printf("bf16 GEMM 4608x3072x12288: %.0f TFLOP/s in bursts of 5, %.0f TFLOP/s sustained (400 back to back)\n",
                  tflop / burst * 1e3, tflop / sustained * 1e3);
      figure("gemm_4608x3072x12288_burst_tflops", tflop / burst * 1e3);
      figure("gemm_4608x3072x12288_sustained_tflops", tflop / sustained * 1e3);
    }

    // ---- fp32 yardstick ----
    at::Tensor out_fp32;
    {
      FluxTransformer2DModel model = load_dense(config, files, at::kFloat);
      out_fp32 = fp32_forward(model, in);
    }
    c10::cuda::CUDACachingAllocator::emptyCache();
    const double err_fused = rel_l2(out_bf16, out_fp32), err_reference = rel_l2(out_bf16_reference, out_fp32),
                 err_diffusers = rel_l2(diffusers_bf16, out_fp32);
    std::printf("relative L2 vs fp32 (same weights and inputs), bf16: fluxbatch fused %.4e, fluxbatch reference "
                "kernels %.4e, diffusers %.4e; fused / diffusers = %.3f (target <= 1.1)\n",
                err_fused, err_reference, err_diffusers, err_fused / err_diffusers);
    figure("rel_l2_vs_fp32_bf16", err_fused);
    figure("rel_l2_vs_fp32_bf16_reference_kernels", err_reference);
    figure("diffusers_rel_l2_vs_fp32_bf16", err_diffusers);

    // ---- fp8 compute (--compute fp8): per-channel e4m3 weights made at load from the bf16 file ----
    const bool fp8_card = ops::fp8_gemm_supported(c10::Device(c10::kCUDA, 0));
    if (fp8_card) {
      const auto t0 = std::chrono::steady_clock::now();
      // Built on the CPU as the pipeline does: fp8 layers never hold their dense weight on the device.
      FluxTransformer2DModel fp8(config, at::TensorOptions().dtype(at::kBFloat16).device(at::kCPU));
      nn::LoadOptions load;
      load.dtype = at::kBFloat16;
      load.device = at::Device(at::kCUDA);
      load.what = "transformer (fp8)";
      const int n = nn::load_state_fp8(*fp8, nn::read_safetensors(files), load, models::flux::computes_in_fp8);
      const int joined = fp8->join_fp8_projections();  // as the pipeline's loader does
      c10::cuda::device_synchronize();
      std::printf("loaded the fp8 transformer (%d fp8 Linears; %d single blocks with q, k, v and MLP in one GEMM) in "
                  "%.1f s (%.2f GiB on the GPU)\n",
                  n, joined, seconds_since(t0), gib(bench::allocated_now()));
      figure("fp8_weights_gib", gib(bench::allocated_now()));
      const at::Tensor out_fp8 = forward(fp8, in).to(at::kCPU).to(at::kFloat);
      const Timings t = time_configurations("1024x1024 batch 1 fp8", "forward_1024_b1_fp8", fp8, in, reps, true,
                                          /*with_reference=*/false);
      if (figure.has("forward_1024_b1_bf16_ms")) {
        figure("fp8_over_bf16", t.graph / figure.at("forward_1024_b1_bf16_ms"));
        std::printf("fp8 / bf16 (fused + graph): %.3f\n", figure.at("fp8_over_bf16"));
      }
      const double err_fp8 = rel_l2(out_fp8, out_fp32);
      std::printf("relative L2 vs fp32 (same weights and inputs), fp8 compute: %.4e (bf16 fused %.4e, diffusers bf16 "
                  "%.4e): fp8 / diffusers bf16 = %.3f\n",
                  err_fp8, err_fused, err_diffusers, err_fp8 / err_diffusers);
      figure("rel_l2_vs_fp32_fp8", err_fp8);
      {
        const Inputs small = random_inputs(config, 512, 4, in.encoder.size(1), at::kBFloat16);
        time_configurations("512x512 batch 4 fp8", "forward_512_b4_fp8", fp8, small, reps, false,
                            /*with_reference=*/false);
      }
      // --attention fp8: the same model with cuDNN's fp8 attention (q, k, v and the output in e4m3).
      if (!ops::fp8_attention_supported(c10::Device(c10::kCUDA, 0))) {
        std::printf("fp8 attention: not available here (needs compute capability 9.0 and a build with cuDNN's "
                    "frontend); not measured\n");
      } else try {
        fp8->set_fp8_attention(true);
        const at::Tensor out_attn = forward(fp8, in).to(at::kCPU).to(at::kFloat);
        const Timings ta = time_configurations("1024x1024 batch 1 fp8, fp8 attention", "forward_1024_b1_fp8_attn", fp8,
                                               in, reps, true, /*with_reference=*/false);
        const double err_attn = rel_l2(out_attn, out_fp32);
        std::printf("relative L2 vs fp32 (same weights and inputs), fp8 compute + fp8 attention: %.4e (fp8 compute "
                    "%.4e); graph time %.1f ms against fp8 compute's %.1f ms: %.3fx\n",
                    err_attn, err_fp8, ta.graph, t.graph, ta.graph / t.graph);
        figure("rel_l2_vs_fp32_fp8_attn", err_attn);
        figure("fp8_attn_over_fp8", ta.graph / t.graph);
        fp8->set_fp8_attention(false);
      } catch (const std::exception& e) {
        // Said, and the rest of the bench goes on: the figures after this one do not depend on it.
        std::printf("fp8 attention FAILED: %s\n", e.what());
        fp8->set_fp8_attention(false);
      }
      // The single blocks' other layouts, in the same call: q, k and v joined without the MLP (cuDNN's packed
      // QKV layout, and the separate GEMMs' peak), then no join at all (four GEMMs). The loader joins all four.
      if (fp8_layouts) {
        fp8->join_fp8_projections(/*with_mlp=*/false);
        time_configurations("1024x1024 batch 1 fp8, q/k/v joined without the MLP", "forward_1024_b1_fp8_qkv_join", fp8,
                            in, reps, true, /*with_reference=*/false);
        const double qkv_vs_joined = rel_l2(forward(fp8, in).to(at::kCPU).to(at::kFloat), out_fp8);
        separate_projections(fp8);
        time_configurations("1024x1024 batch 1 fp8, no joined GEMM", "forward_1024_b1_fp8_no_join", fp8, in, reps, true,
                            /*with_reference=*/false);
        const double separate_vs_joined = rel_l2(forward(fp8, in).to(at::kCPU).to(at::kFloat), out_fp8);
        std::printf("single-block layouts against the joined q/k/v/MLP output: q/k/v only %.3e, separate %.3e "
                    "(relative L2; cuBLASLt may round a wider GEMM's product differently)\n",
                    qkv_vs_joined, separate_vs_joined);
        figure("rel_l2_fp8_qkv_join_vs_join", qkv_vs_joined);
        figure("rel_l2_fp8_no_join_vs_join", separate_vs_joined);
        fp8->join_fp8_projections();
      }
    } else {
      std::printf("fp8 compute: this GPU has no fp8 tensor cores (compute capability < 8.9); not measured\n");
    }
    c10::cuda::CUDACachingAllocator::emptyCache();

    // ---- NF4 (diffusers' bitsandbytes file): speed, and fidelity against fp32 of the same (dequantized) weights ----
    // With --fp8-only 1 the NF4 forward is not timed, but its fidelity and the NF4 + fp8 figures are taken.
    if (!nf4_dir.empty()) {
      const auto t0 = std::chrono::steady_clock::now();
      FluxTransformer2DModel nf4(config, at::TensorOptions().dtype(at::kBFloat16).device(at::kCPU));
      nn::LoadOptions load;
      load.dtype = at::kBFloat16;
      load.device = at::Device(at::kCUDA);
      load.what = "transformer (nf4)";
      nn::load_nf4_state(*nf4, nn::read_safetensors(safetensors_in(fs::path(nf4_dir) / "transformer")), load);
      c10::cuda::device_synchronize();
      std::printf("loaded the NF4 transformer in %.1f s (%.2f GiB on the GPU)\n", seconds_since(t0), gib(bench::allocated_now()));
      const at::Tensor out_nf4 = forward(nf4, in).to(at::kCPU).to(at::kFloat);
      if (!fp8_only) {
        const Timings t = time_configurations("1024x1024 batch 1 nf4", "forward_1024_b1_nf4", nf4, in, reps, true);
        figure("nf4_over_bf16", t.graph / figure.at("forward_1024_b1_bf16_ms"));
        std::printf("NF4 / bf16 (fused + graph): %.3f (target <= 1.05)\n", figure.at("nf4_over_bf16"));
      }

      // The fp32 model of the same weights: bf16 file for everything NF4 leaves dense, NF4 Linears dequantized
      // as bitsandbytes does (to bf16), then widened.
      FluxTransformer2DModel wide = load_dense(config, files, at::kFloat);
      std::map<std::string, std::shared_ptr<torch::nn::Module>> wide_modules;
      for (const auto& item : wide->named_modules()) wide_modules[item.key()] = item.value();
      int replaced = 0;
      for (const auto& item : nf4->named_modules()) {
        const auto* linear = dynamic_cast<const nn::LinearImpl*>(item.value().get());
        if (!linear || !linear->is_nf4()) continue;
        auto* target = dynamic_cast<nn::LinearImpl*>(wide_modules.at(item.key()).get());
        target->weight.copy_(ops::nf4_dequantize(linear->nf4(), at::kBFloat16).to(at::kFloat));
        ++replaced;
      }
      const at::Tensor out_nf4_fp32 = fp32_forward(wide, in);
      const double err_nf4 = rel_l2(out_nf4, out_nf4_fp32);
      std::printf("NF4 weights (%d Linears), relative L2 vs the fp32 forward of the same weights: fluxbatch %.4e",
                  replaced, err_nf4);
      figure("rel_l2_vs_fp32_nf4", err_nf4);
      if (ref.count("output_nf4")) {
        const double err = rel_l2(ref.at("output_nf4"), out_nf4_fp32);
        std::printf(", diffusers + bitsandbytes %.4e; fluxbatch / diffusers = %.3f (target <= 1.1)", err, err_nf4 / err);
        figure("diffusers_rel_l2_vs_fp32_nf4", err);
      }
      std::printf("\n");
      figure("rel_l2_nf4_vs_fp32_bf16_weights", rel_l2(out_nf4, out_fp32));

      // NF4 storage, fp8 compute: NF4 kept and turned into fp8 at each call (a budget short of fp8 weights),
      // then converted once at load (the default when fp8 weights fit).
      if (fp8_card) {
        wide_modules.clear();
        wide = nullptr;
        c10::cuda::CUDACachingAllocator::emptyCache();
        nn::nf4_layers_to_fp8(*nf4, models::flux::computes_in_fp8, /*keep_nf4=*/true);
        const double per_call = median_ms([&] { forward(nf4, in); }, reps);
        Step step(nf4, in);
        double per_call_graph = 0;
        {
          runtime::execution::GraphedDenoiser graphed(step, true, "nf4 fp8 per call", 1 << 20);
          per_call_graph = median_ms([&] { graphed.predict(in.hidden, in.timestep); }, reps);
        }
        const auto t0 = std::chrono::steady_clock::now();
        nn::nf4_layers_to_fp8(*nf4, models::flux::computes_in_fp8, /*keep_nf4=*/false);
        nf4->join_fp8_projections();
        c10::cuda::device_synchronize();
        const double convert_s = seconds_since(t0);
        const at::Tensor out_nf4_fp8 = forward(nf4, in).to(at::kCPU).to(at::kFloat);
        double resident_graph = 0;
        {
          runtime::execution::GraphedDenoiser graphed(step, true, "nf4 -> fp8", 1 << 20);
          resident_graph = median_ms([&] { graphed.predict(in.hidden, in.timestep); }, reps);
        }
        std::printf("1024x1024 batch 1, NF4 file with fp8 compute: NF4 kept, fp8 per call %.1f ms eager, %.1f ms graph; "
                    "converted to fp8 at load (%.1f s, %.2f GiB on the GPU) %.1f ms graph; relative L2 vs the fp32 "
                    "forward of the NF4 weights %.4e\n",
                    per_call, per_call_graph, convert_s, gib(bench::allocated_now()), resident_graph,
                    rel_l2(out_nf4_fp8, out_nf4_fp32));
        figure("forward_1024_b1_nf4_fp8_per_call_ms", per_call_graph);
        figure("forward_1024_b1_nf4_fp8_ms", resident_graph);
        figure("rel_l2_vs_fp32_nf4_fp8", rel_l2(out_nf4_fp8, out_nf4_fp32));
      }
    }
    c10::cuda::CUDACachingAllocator::emptyCache();

    // ---- schnell's shape: no guidance embedder, 4 steps of 1024^2 with 256 tokens (random weights) ----
    if (!fp8_only) {
      FluxConfig schnell = config;
      schnell.guidance_embeds = false;
      FluxTransformer2DModel model(schnell, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
      at::manual_seed(7);
      for (auto& p : model->parameters()) p.normal_(0.0, 0.02);
      const Inputs s = random_inputs(schnell, 1024, 1, 256, at::kBFloat16);
      // `steps_told`: what the denoiser is told the call makes (4 = render's policy; large = a graph forced).
      auto four_steps = [&](bool graphs, int steps_told) {
        Step step(model, s);
        runtime::execution::GraphedDenoiser denoiser(step, graphs, "schnell", steps_told);
        at::Tensor x = s.hidden;
        for (int i = 0; i < 4; ++i) x = denoiser.predict(x, s.timestep).mul_(0.01).add_(s.hidden);
      };
      const double eager = median_ms([&] { four_steps(false, 4); }, 5);
      const double graphs = median_ms([&] { four_steps(true, 1 << 20); }, 5);
      std::printf("schnell 1024x1024, 4 steps (256 tokens), fused kernels: eager %.1f ms (what render does: a batch "
                  "of fewer than %d steps is not captured), CUDA graph forced from step 2 (capture included) "
                  "%.1f ms: %.3fx\n",
                  eager, runtime::execution::GraphedDenoiser::kMinGraphSteps, graphs, eager / graphs);
      figure("schnell_4step_1024_eager_ms", eager);
      figure("schnell_4step_1024_graph_ms", graphs);
    }
    if (!json_path.empty()) figure.write_json(json_path);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!json_path.empty()) figure.write_json(json_path);
    return 3;
  }
}
