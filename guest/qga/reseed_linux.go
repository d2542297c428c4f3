package qga

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// The random driver's ioctls (linux/random.h).
const (
	rndAddEntropy = 0x40085203 // RNDADDENTROPY, _IOW('R', 0x03, int[2])
	rndReseedCRNG = 0x5207     // RNDRESEEDCRNG, _IO('R', 0x07), Linux 4.17 and later
)

// reseedCRNG mixes seed into the kernel's input pool crediting all of its
// bits (RNDADDENTROPY: the host's randomness is real entropy to the
// guest), then has the kernel reseed its CRNG (RNDRESEEDCRNG). Crediting
// matters for a guest saved before its CRNG was ready: until the pool has
// 256 credited bits the kernel keeps drawing from its early key, which a
// clone shares with its source; crediting 256 bits reseeds it at once.
// Both need CAP_SYS_ADMIN.
func reseedCRNG(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if len(seed) > 0 {
		info := make([]byte, 8+len(seed)) // struct rand_pool_info
		binary.NativeEndian.PutUint32(info[0:], uint32(8*len(seed)))
		binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
		copy(info[8:], seed)
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
			return fmt.Errorf("add the seed to the input pool (RNDADDENTROPY): %w", e)
		}
	}
	// ENODATA: the CRNG is not ready (a seed too short to make it so);
	// it reseeds when it becomes ready.
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); e != 0 && !errors.Is(e, syscall.ENODATA) {
		return fmt.Errorf("reseed the CRNG (RNDRESEEDCRNG): %w", e)
	}
	return nil
}
