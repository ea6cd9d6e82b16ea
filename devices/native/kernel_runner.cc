// The smallest runner of a TVM kernel library, for targets without a TVM runtime (armv7).
//
// A kernel library built by tvm.compile for an llvm target and linked by export_library exports one
// C symbol per function, __tvm_ffi_<name>, with the tvm_ffi "safe call" ABI, and uses only a few
// runtime functions (error reporting, parallel launch, workspaces), some linked by name, some
// through "__<function>" pointers that the loader fills in. This program provides those
// (parallel loops run on one thread), dlopens the library and calls one function:
//
//   kernel_runner LIBRARY FUNCTION IN_FILE OUT_FILE NUMBER REPEAT
//
// IN_FILE (little endian): "MESTRUN1", u32 count, then per argument u32 kind
//   kind 0 tensor: u8 code, u8 bits, u16 lanes, u32 ndim, i64 shape[ndim], u64 nbytes, data
//   kind 1 int64: i64;  kind 2 float64: f64
// The function is called once, then REPEAT times NUMBER calls are timed (REPEAT may be 0).
// OUT_FILE: "MESTOUT1", u32 tensor count, each tensor's data after the first call's run, then
// u32 REPEAT and REPEAT f64 mean seconds per call. Errors go to stderr, exit status 1.
#include <dlfcn.h>
#include <tvm/ffi/c_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

extern "C" {
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

static std::string g_error;

void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) {
  g_error = std::string(kind) + ": " + message;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
  g_error = std::string(kind) + ": ";
  for (int32_t i = 0; i < num_parts; ++i) {
    if (parts[i] != nullptr) g_error += parts[i];
  }
}

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  TVMParallelGroupEnv env{nullptr, 1};
  return flambda(0, &env, cdata);
}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) { return 0; }

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code,
                               int dtype_bits) {
  void* ptr = nullptr;
  return posix_memalign(&ptr, 64, nbytes == 0 ? 1 : nbytes) == 0 ? ptr : nullptr;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  free(ptr);
  return 0;
}

int TVMFFIHandleInitOnce(void** handle_addr, int (*init_func)(void** result)) {
  return *handle_addr == nullptr ? init_func(handle_addr) : 0;
}

static int UnsupportedFunctionCall(void* func, TVMFFIAny* args, int32_t num_args,
                                   TVMFFIAny* result) {
  g_error = "RuntimeError: the kernel calls a packed function; the kernel runner has none";
  return -1;
}

static int UnsupportedLookupFromImports(void* library_ctx, const char* func_name, void** out) {
  g_error = std::string("RuntimeError: the kernel needs function ") + func_name +
            ", which the kernel runner does not provide";
  return -1;
}
}

namespace {

// Kernel libraries call the runtime through function pointers named "__<function>" that the
// loader fills in (tvm_ffi's ContextSymbolRegistry); this is the runner's version of that table.
struct ContextSymbol {
  const char* name;
  void* function;
};

const ContextSymbol kContextSymbols[] = {
    {"__TVMFFIErrorSetRaisedFromCStr", reinterpret_cast<void*>(&TVMFFIErrorSetRaisedFromCStr)},
    {"__TVMFFIFunctionCall", reinterpret_cast<void*>(&UnsupportedFunctionCall)},
    {"__TVMFFIEnvModLookupFromImports", reinterpret_cast<void*>(&UnsupportedLookupFromImports)},
    {"__TVMFFIHandleInitOnce", reinterpret_cast<void*>(&TVMFFIHandleInitOnce)},
    {"__TVMBackendAllocWorkspace", reinterpret_cast<void*>(&TVMBackendAllocWorkspace)},
    {"__TVMBackendFreeWorkspace", reinterpret_cast<void*>(&TVMBackendFreeWorkspace)},
    {"__TVMBackendParallelLaunch", reinterpret_cast<void*>(&TVMBackendParallelLaunch)},
    {"__TVMBackendParallelBarrier", reinterpret_cast<void*>(&TVMBackendParallelBarrier)},
};

void InitContextSymbols(void* library) {
  for (const ContextSymbol& symbol : kContextSymbols) {
    if (void** slot = reinterpret_cast<void**>(dlsym(library, symbol.name))) {
      *slot = symbol.function;
    }
  }
}

}  // namespace

namespace {

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "kernel_runner: %s\n", message.c_str());
  std::exit(1);
}

template <typename T>
T Read(FILE* file) {
  T value;
  if (std::fread(&value, sizeof(T), 1, file) != 1) Fail("truncated input file");
  return value;
}

struct Argument {
  TVMFFIAny any{};
  DLTensor tensor{};
  std::vector<int64_t> shape;
  size_t nbytes = 0;
};

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) Fail("usage: kernel_runner LIBRARY FUNCTION IN_FILE OUT_FILE NUMBER REPEAT");
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) Fail(std::string("cannot load library: ") + dlerror());
  InitContextSymbols(library);
  std::string symbol = std::string("__tvm_ffi_") + argv[2];
  auto function = reinterpret_cast<TVMFFISafeCallType>(dlsym(library, symbol.c_str()));
  if (function == nullptr) Fail("library has no function " + std::string(argv[2]));
  const int number = std::atoi(argv[5]);
  const int repeat = std::atoi(argv[6]);

  FILE* in = std::fopen(argv[3], "rb");
  if (in == nullptr) Fail("cannot open input file");
  char magic[8];
  if (std::fread(magic, 1, 8, in) != 8 || std::memcmp(magic, "MESTRUN1", 8) != 0) {
    Fail("input file is not a runner input");
  }
  const uint32_t count = Read<uint32_t>(in);
  std::vector<Argument> arguments(count);
  for (Argument& argument : arguments) {
    const uint32_t kind = Read<uint32_t>(in);
    if (kind == 1) {
      argument.any.type_index = kTVMFFIInt;
      argument.any.v_int64 = Read<int64_t>(in);
    } else if (kind == 2) {
      argument.any.type_index = kTVMFFIFloat;
      argument.any.v_float64 = Read<double>(in);
    } else if (kind == 0) {
      argument.tensor.dtype.code = Read<uint8_t>(in);
      argument.tensor.dtype.bits = Read<uint8_t>(in);
      argument.tensor.dtype.lanes = Read<uint16_t>(in);
      argument.shape.resize(Read<uint32_t>(in));
      for (int64_t& extent : argument.shape) extent = Read<int64_t>(in);
      argument.nbytes = static_cast<size_t>(Read<uint64_t>(in));
      void* data = nullptr;
      if (posix_memalign(&data, 64, argument.nbytes == 0 ? 1 : argument.nbytes) != 0) {
        Fail("out of memory");
      }
      if (std::fread(data, 1, argument.nbytes, in) != argument.nbytes) Fail("truncated tensor");
      argument.tensor.data = data;
      argument.tensor.device = DLDevice{kDLCPU, 0};
      argument.tensor.ndim = static_cast<int32_t>(argument.shape.size());
      argument.tensor.shape = argument.shape.data();
      argument.any.type_index = kTVMFFIDLTensorPtr;
      argument.any.v_ptr = &argument.tensor;
    } else {
      Fail("unknown argument kind");
    }
  }
  std::fclose(in);

  std::vector<TVMFFIAny> packed;
  for (const Argument& argument : arguments) packed.push_back(argument.any);
  auto call = [&]() {
    TVMFFIAny result{};
    result.type_index = kTVMFFINone;
    if (function(nullptr, packed.data(), static_cast<int32_t>(packed.size()), &result) != 0) {
      Fail(g_error.empty() ? "kernel failed" : g_error);
    }
  };
  call();

  FILE* out = std::fopen(argv[4], "wb");
  if (out == nullptr) Fail("cannot open output file");
  std::fwrite("MESTOUT1", 1, 8, out);
  uint32_t tensors = 0;
  for (const Argument& argument : arguments) tensors += argument.any.type_index == kTVMFFIDLTensorPtr;
  std::fwrite(&tensors, sizeof(tensors), 1, out);
  for (const Argument& argument : arguments) {
    if (argument.any.type_index == kTVMFFIDLTensorPtr) {
      std::fwrite(argument.tensor.data, 1, argument.nbytes, out);
    }
  }
  std::vector<double> means;
  for (int r = 0; r < repeat; ++r) {
    const double start = Now();
    for (int n = 0; n < number; ++n) call();
    means.push_back((Now() - start) / (number > 0 ? number : 1));
  }
  const uint32_t repeats = static_cast<uint32_t>(means.size());
  std::fwrite(&repeats, sizeof(repeats), 1, out);
  if (repeats != 0) std::fwrite(means.data(), sizeof(double), repeats, out);
  if (std::fclose(out) != 0) Fail("cannot write output file");
  return 0;
}
