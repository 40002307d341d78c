// llmc_engine.cc: see llmc_engine.h. Uses only TVM's runtime (no compiler), as the Python runtime
// llmc/runtime/engine.py does: the Relax VM, the tensor cache and the paged-KV-cache builtins.
#include "llmc_engine.h"

#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <stdexcept>

namespace llmc {

namespace ffi = tvm::ffi;
using tvm::ffi::Tensor;

namespace {

constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::AllocatorType::kPooled
constexpr int64_t kPageSize = 16;    // tokens per KV-cache page (as llmc's runtime uses)
constexpr int64_t kSequenceId = 0;

ffi::Function Global(const char* name) { return ffi::Function::GetGlobalRequired(name); }


// The model's objects registered their symbols under model_lib at static-initialisation time.
// A path to a shared library (a desktop build: ends in .so/.dylib/.dll) is loaded from the file instead.
ffi::Module LoadExecutable(const std::string& model_lib) {
  auto ends_with = [&](const std::string& suffix) {
    return model_lib.size() >= suffix.size() && model_lib.compare(model_lib.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  bool shared = ends_with(".so") || ends_with(".dylib") || ends_with(".dll");
  ffi::Module lib = shared ? ffi::Module::LoadFromFile(ffi::String(model_lib))
                           : Global("ffi.SystemLib")(ffi::String(model_lib)).cast<ffi::Module>();
  ffi::Optional<ffi::Function> load_executable = lib->GetFunction("vm_load_executable");
  if (!load_executable.has_value()) {
    throw std::runtime_error("model library '" + model_lib +
                             "' is not linked into the app (link libllmc_models.a with whole-archive)");
  }
  return (*load_executable)().cast<ffi::Module>();
}

}  // namespace

Engine::Engine(const ModelSpec& spec, DLDeviceType device_type, int device_id)
    : spec_(spec), device_{device_type, device_id}, vm_(LoadExecutable(spec.model_lib)) {
  // Devices: the model's device, then the CPU (shape functions run there), both pooled.
  VMFunction("vm_initialization")(static_cast<int>(device_.device_type), device_.device_id, kPooledAllocator,
                                  static_cast<int>(kDLCPU), 0, kPooledAllocator);

  Global("vm.builtin.tensor_cache.load")(ffi::String(spec_.model_dir), static_cast<int>(device_.device_type),
                                         device_.device_id);
  ffi::Array<ffi::String> names;
  for (const std::string& name : spec_.param_names) names.push_back(ffi::String(name));
  params_ = Global("vm.builtin.param_array_from_cache_by_name")(names).cast<ffi::Array<Tensor>>();
  Global("vm.builtin.tensor_cache.clear")();

  kv_cache_ = VMFunction("create_paged_kv_cache")(ffi::Shape({1}), ffi::Shape({spec_.context_window}),
                                                  ffi::Shape({spec_.prefill_chunk}), ffi::Shape({kPageSize}),
                                                  ffi::Shape({0}));
  Global("vm.builtin.kv_state_add_sequence")(kv_cache_, kSequenceId);
}

ffi::Function Engine::VMFunction(const char* name) const {
  ffi::Optional<ffi::Function> function = vm_->GetFunction(name);
  if (!function.has_value()) throw std::runtime_error(std::string("model library lacks function ") + name);
  return *function;
}

Tensor Engine::Embed(const int32_t* tokens, int64_t count) {
  Tensor ids = Global("runtime.TVMTensorAllocWithScope")(ffi::Shape({count}), DLDataType{kDLInt, 32, 1}, device_,
                                                         ffi::Any())
                   .cast<Tensor>();
  Global("runtime.TVMTensorCopyFromBytes")(ids, static_cast<void*>(const_cast<int32_t*>(tokens)),
                                           static_cast<size_t>(count) * sizeof(int32_t));
  Tensor embeds = VMFunction("embed")(ids, params_).cast<Tensor>();
  int64_t hidden = embeds.size(-1);
  return Global("vm.builtin.reshape")(embeds, ffi::Shape({1, count, hidden})).cast<Tensor>();
}

std::vector<float> Engine::Forward(const char* function, const int32_t* tokens, int64_t count) {
  if (length_ + count > spec_.context_window) throw std::runtime_error("the context window is full; Reset()");
  Tensor embeds = Embed(tokens, count);
  Global("vm.builtin.kv_state_begin_forward")(kv_cache_, ffi::Shape({kSequenceId}), ffi::Shape({count}));
  ffi::Array<ffi::Any> outputs = VMFunction(function)(embeds, kv_cache_, params_).cast<ffi::Array<ffi::Any>>();
  Global("vm.builtin.kv_state_end_forward")(kv_cache_);
  kv_cache_ = outputs[1];
  length_ += count;
  Tensor logits = outputs[0].cast<Tensor>();  // (1, 1, vocab) float32
  std::vector<float> host(static_cast<size_t>(logits.size(-1)));
  Global("runtime.TVMTensorCopyToBytes")(logits, static_cast<void*>(host.data()), host.size() * sizeof(float));
  return host;
}

std::vector<float> Engine::Prefill(const std::vector<int32_t>& tokens) {
  if (tokens.empty()) throw std::runtime_error("cannot prefill an empty prompt");
  std::vector<float> logits;
  for (size_t start = 0; start < tokens.size(); start += static_cast<size_t>(spec_.prefill_chunk)) {
    int64_t count = std::min<int64_t>(spec_.prefill_chunk, static_cast<int64_t>(tokens.size() - start));
    logits = Forward("prefill", tokens.data() + start, count);
  }
  return logits;
}

std::vector<float> Engine::Decode(int32_t token) { return Forward("decode", &token, 1); }

void Engine::Reset() {
  Global("vm.builtin.kv_state_clear")(kv_cache_);
  Global("vm.builtin.kv_state_add_sequence")(kv_cache_, kSequenceId);
  length_ = 0;
}

int32_t Engine::Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace llmc
