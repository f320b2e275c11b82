/* LD_PRELOAD helper for the device machine (no gdb there): on SIGSEGV, print the native stack
 * (glibc backtrace_symbols_fd) to stderr, then die with the default action.
 * Build: gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so tools/device/segv_backtrace.c */
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_segv(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  static const char header[] = "\n[segv_backtrace] native stack:\n";
  write(2, header, sizeof(header) - 1);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = on_segv;
  action.sa_flags = SA_ONSTACK;
  sigaction(SIGSEGV, &action, NULL);
}
