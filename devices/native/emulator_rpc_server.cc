// The RPC server that runs under qemu for the "emulator" session of devices/.
//
// TVM's pipe client (rpc.CreatePipeClient) starts this program with two extra arguments, the file
// descriptors to read requests from and write replies to. Every chunk read is handed to the event
// driven RPC server of the TVM runtime (rpc.CreateEventDrivenServer, in libtvm_runtime.so), which
// frames, executes and answers. Only the public tvm_ffi headers are used; the program is linked
// against the aarch64 libtvm_runtime.so / libtvm_ffi.so taken from the release's wheels.
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>

namespace ffi = tvm::ffi;

static bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t written = write(fd, data, size);
    if (written <= 0) return false;
    data += written;
    size -= static_cast<size_t>(written);
  }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const int read_fd = std::atoi(argv[argc - 2]);
  const int write_fd = std::atoi(argv[argc - 1]);
  ffi::Function send = ffi::Function::FromTyped([write_fd](TVMFFIByteArray* bytes) -> int64_t {
    return WriteAll(write_fd, bytes->data, bytes->size) ? static_cast<int64_t>(bytes->size) : -1;
  });
  ffi::Function create = ffi::Function::GetGlobalRequired("rpc.CreateEventDrivenServer");
  ffi::Function handle = create(send, "mest-emulator", "").cast<ffi::Function>();
  static char buffer[1 << 16];
  for (;;) {
    ssize_t received = read(read_fd, buffer, sizeof(buffer));
    if (received <= 0) return 0;  // the client closed the pipe
    // Status 2: replies are pending, call again to flush them; 0: the client asked to shut down.
    int status = handle(ffi::Bytes(buffer, static_cast<size_t>(received)), 3).cast<int>();
    while (status == 2) status = handle(ffi::Bytes(), 3).cast<int>();
    if (status == 0) return 0;
  }
}
