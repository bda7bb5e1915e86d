// Precompiled header for the libtorch translation units. Only the pieces of torch the code uses:
// ATen tensors and the nn::Module machinery, never <torch/torch.h>.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
