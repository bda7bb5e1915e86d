# Finds every third-party dependency. libtorch comes from the project venv's torch wheel
# (pip install torch==2.11.0), found through torch.utils.cmake_prefix_path.

find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)

find_path(STB_INCLUDE_DIR stb_image_write.h PATH_SUFFIXES stb
  HINTS ${CMAKE_SOURCE_DIR}/.stb/usr/include/stb ${CMAKE_SOURCE_DIR}/.stb)
if(NOT STB_INCLUDE_DIR)
  message(FATAL_ERROR "stb_image_write.h not found: install libstb-dev (scripts/setup.sh does)")
endif()

find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h)
find_library(SENTENCEPIECE_LIBRARY sentencepiece)
if(NOT SENTENCEPIECE_INCLUDE_DIR OR NOT SENTENCEPIECE_LIBRARY)
  message(FATAL_ERROR "sentencepiece not found: install libsentencepiece-dev (scripts/setup.sh does)")
endif()

# ---- libtorch --------------------------------------------------------------------------------
if(NOT FLUXBATCH_PYTHON)
  if(EXISTS ${CMAKE_SOURCE_DIR}/.venv/bin/python3)
    set(FLUXBATCH_PYTHON ${CMAKE_SOURCE_DIR}/.venv/bin/python3)
  else()
    find_program(FLUXBATCH_PYTHON python3 REQUIRED)
  endif()
endif()
execute_process(
  COMMAND ${FLUXBATCH_PYTHON} -c "import torch, os; print(os.path.dirname(torch.__file__))"
  OUTPUT_VARIABLE FLUXBATCH_TORCH_ROOT OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "No torch in ${FLUXBATCH_PYTHON}: run scripts/setup.sh (pip install torch==2.11.0)")
endif()

include(CheckLanguage)
set(FLUXBATCH_WITH_CUDA OFF)
if(FLUXBATCH_CUDA)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    set(FLUXBATCH_WITH_CUDA ON)
  endif()
endif()

if(FLUXBATCH_WITH_CUDA)
  # The wheel is a CUDA build: its CMake config needs the toolkit, which we have.
  list(APPEND CMAKE_PREFIX_PATH ${FLUXBATCH_TORCH_ROOT}/share/cmake)
  # Torch's CMake adds -gencode flags for its own default arch list (which nvcc 13 rejects) unless told.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
    string(REGEX REPLACE "([0-9])([0-9a-z]+)$" "\\1.\\2" _fb_arch_list "${CMAKE_CUDA_ARCHITECTURES}")
    set(TORCH_CUDA_ARCH_LIST "${_fb_arch_list}")
  endif()
  find_package(Torch REQUIRED)
  # cuBLASLt directly: the fused GEMM epilogues (src/ops/linear_gelu_cuda.cu). libtorch loads it too.
  find_package(CUDAToolkit REQUIRED)
  add_library(fluxbatch::torch INTERFACE IMPORTED)
  target_link_libraries(fluxbatch::torch INTERFACE ${TORCH_LIBRARIES} CUDA::cublasLt)
  target_include_directories(fluxbatch::torch INTERFACE ${TORCH_INCLUDE_DIRS})
  message(STATUS "fluxbatch: CUDA build (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
  # cuDNN's C++ frontend (header-only; the PyPI wheel nvidia-cudnn-frontend puts it in site-packages/include) and
  # cuDNN's own headers (nvidia-cudnn-cu13, which torch depends on): fp8 attention (src/ops/fp8_attention_cudnn.cpp).
  # Without them the build goes on and --attention fp8 says it is not available.
  execute_process(
    COMMAND ${FLUXBATCH_PYTHON} -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    OUTPUT_VARIABLE _fb_site OUTPUT_STRIP_TRAILING_WHITESPACE)
  find_path(FLUXBATCH_CUDNN_FRONTEND_DIR cudnn_frontend.h HINTS ${_fb_site}/include NO_DEFAULT_PATH)
  find_path(FLUXBATCH_CUDNN_INCLUDE_DIR cudnn.h HINTS ${_fb_site}/nvidia/cudnn/include ${FLUXBATCH_TORCH_ROOT}/../nvidia/cudnn/include)
  if(FLUXBATCH_CUDNN_FRONTEND_DIR AND FLUXBATCH_CUDNN_INCLUDE_DIR)
    set(FLUXBATCH_WITH_CUDNN_FRONTEND ON)
    message(STATUS "fluxbatch: fp8 attention through cuDNN's frontend (${FLUXBATCH_CUDNN_FRONTEND_DIR})")
  else()
    set(FLUXBATCH_WITH_CUDNN_FRONTEND OFF)
    message(STATUS "fluxbatch: no cuDNN frontend headers (pip install nvidia-cudnn-frontend): no fp8 attention")
  endif()
else()
  # Without nvcc the wheel's TorchConfig refuses to load, so link the CPU half of libtorch by hand.
  add_library(fluxbatch::torch INTERFACE IMPORTED)
  target_include_directories(fluxbatch::torch INTERFACE
    ${FLUXBATCH_TORCH_ROOT}/include ${FLUXBATCH_TORCH_ROOT}/include/torch/csrc/api/include)
  target_link_libraries(fluxbatch::torch INTERFACE
    ${FLUXBATCH_TORCH_ROOT}/lib/libtorch.so ${FLUXBATCH_TORCH_ROOT}/lib/libtorch_cpu.so
    ${FLUXBATCH_TORCH_ROOT}/lib/libc10.so)
  target_compile_definitions(fluxbatch::torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
  target_link_options(fluxbatch::torch INTERFACE "-Wl,-rpath,${FLUXBATCH_TORCH_ROOT}/lib")
  message(STATUS "fluxbatch: CPU-only build (no nvcc found)")
endif()

# libtorch.so exports its own, incompatible copy of std::filesystem (remove_all, directory iterators). If it
# comes before libstdc++ in the symbol search order, our std::filesystem calls bind to it and crash. Make
# libstdc++ the first needed library of everything that links libtorch, so its definitions win.
target_link_options(fluxbatch::torch INTERFACE "SHELL:-Wl,--push-state,--no-as-needed -lstdc++ -Wl,--pop-state")
