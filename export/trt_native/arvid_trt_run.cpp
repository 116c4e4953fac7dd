// arvid_trt_run PLAN [ITERS]: load a TensorRT plan built by `arvid export trt`, bind a zero-filled
// device buffer to every I/O tensor by name, and time enqueueV3 on one CUDA stream.
// Written to TensorRT 10/11's documented C++ API (nvinfer1::IRuntime, ICudaEngine, IExecutionContext).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[trt] %s\n", msg);
  }
};

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    default: return 1;
  }
}

#define CHECK_CUDA(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); return 1; } } while (0)

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: %s PLAN [ITERS]\n", argv[0]); return 2; }
  const int iters = argc > 2 ? std::atoi(argv[2]) : 20;
  std::ifstream f(argv[1], std::ios::binary);
  if (!f) { std::fprintf(stderr, "cannot open %s\n", argv[1]); return 2; }
  std::vector<char> plan((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
  std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!engine) { std::fprintf(stderr, "cannot deserialize %s\n", argv[1]); return 1; }
  std::unique_ptr<nvinfer1::IExecutionContext> ctx(engine->createExecutionContext());
  std::vector<void*> buffers;
  for (int i = 0; i < engine->getNbIOTensors(); ++i) {
    const char* name = engine->getIOTensorName(i);
    nvinfer1::Dims d = engine->getTensorShape(name);
    size_t n = element_size(engine->getTensorDataType(name));
    for (int j = 0; j < d.nbDims; ++j) n *= static_cast<size_t>(d.d[j] > 0 ? d.d[j] : 1);
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, n));
    CHECK_CUDA(cudaMemset(p, 0, n));
    ctx->setTensorAddress(name, p);
    buffers.push_back(p);
    std::printf("%s %s (%zu bytes)\n",
                engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? "input " : "output", name, n);
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  if (!ctx->enqueueV3(stream)) { std::fprintf(stderr, "enqueueV3 failed\n"); return 1; }  // warm-up
  CHECK_CUDA(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) ctx->enqueueV3(stream);
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  std::printf("%d enqueues: %.3f ms each\n", iters, ms / iters);
  for (void* p : buffers) cudaFree(p);
  cudaStreamDestroy(stream);
  return 0;
}
