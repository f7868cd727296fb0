// microkernel/version.h -- the kernel version, printed in the banner.
// The one place it is defined: hil/image.py reads it from here too.
#define PXOS_VERSION "0.1.0"
