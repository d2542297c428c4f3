//go:build linux

// Command agent is the vmfest tiny guest's QEMU guest agent. It serves the
// qemu-ga protocol (see package qga) on the virtio-serial port named
// org.qemu.guest_agent.0 and powers the guest off when the ACPI power button
// is pressed. It never exits on its own.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/guest/dhcp"
	"github.com/vmfest/vmfest/guest/qga"
)

const portName = "org.qemu.guest_agent.0"

func main() {
	port := flag.String("port", "", "device to serve on (default: find the virtio port named "+portName+")")
	noButton := flag.Bool("no-power-button", false, "do not watch /dev/input for the power button")
	dhcpPattern := flag.String("dhcp", "", "the Ethernet interfaces whose names match this pattern (e.g. eth*) are kept by this program's DHCP client (-dhcp-client): vmfest-reidentify leaves their DHCP to it")
	dhcpClient := flag.String("dhcp-client", "", "be only the DHCP client of the Ethernet interfaces whose names match this pattern")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vmfest-agent: ")

	if *dhcpClient != "" {
		runDHCP(*dhcpClient)
		return
	}
	if !*noButton {
		go watchPowerButton()
	}
	a := &qga.Agent{Shutdown: shutdown, Logf: log.Printf}
	if *dhcpPattern != "" {
		a.DHCP = dhcpInterfaces(*dhcpPattern)
	}
	serve(a, *port)
}

// dhcpInterfaces is the pattern of the interfaces the DHCP client keeps.
type dhcpInterfaces string

func (p dhcpInterfaces) Manages(ifc string) bool { return dhcp.Matches(string(p), ifc) }

// runDHCP is the DHCP client process (package dhcp), which the tiny image
// starts beside the agent. Apart from the agent, its goroutines, timers
// and sockets cost the agent nothing when a saved guest resumes (under TCG
// the agent answered a resumed guest ~40 ms later with the client in its
// own process), and the image's start-up runs it at a lower priority
// while the agent comes up, as it did udhcpc.
func runDHCP(pattern string) {
	log.SetPrefix("vmfest-agent dhcp: ")
	// The DHCP library takes transaction IDs from getrandom, and spins
	// until the kernel's CRNG is initialised, which under TCG is seconds
	// after boot. An ID needs no cryptographic strength (udhcpc seeds
	// its own from the clock): read /dev/urandom.
	os.Setenv("UROOT_NOHWRNG", "1")
	c := dhcp.New(dhcp.Config{Pattern: pattern, Logf: log.Printf})
	if err := c.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// findPort returns /dev/vportNpM for the virtio-serial port with the given name.
func findPort(name string) string {
	paths, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p))
		}
	}
	return ""
}

func serve(a *qga.Agent, dev string) {
	warned := false
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, syscall.SIGIO)
	for {
		path := dev
		if path == "" {
			path = findPort(portName)
		}
		if path == "" {
			if !warned {
				log.Printf("virtio port %s not found; waiting", portName)
				warned = true
			}
			time.Sleep(time.Second)
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			log.Printf("open %s: %v", path, err)
			time.Sleep(time.Second)
			continue
		}
		log.Printf("serving on %s", path)
		warned = false
		hostEvents(f)
		for {
			// Serve returns on EOF (host side not connected) or error;
			// keep the device open and read again when the host
			// connects (SIGIO), or shortly. Each call starts with a
			// fresh parser.
			if err := a.Serve(f, f); err != io.EOF {
				log.Printf("read %s: %v; reopening", path, err)
				break
			}
			select {
			case <-sigio:
			case <-time.After(200 * time.Millisecond):
			}
		}
		f.Close()
		time.Sleep(time.Second)
	}
}

// hostEvents asks the kernel for SIGIO when the host side of the virtio
// port f connects or disconnects (virtio_console sends it to a port's
// fasync owner), so that a host connecting right after the last one left
// (vmfest connects once per call; a guest resumed from a saved state is
// connected to at once) is answered without waiting for the next poll. A
// kernel that does not send it leaves the poll to time.After.
func hostEvents(f *os.File) {
	fd := f.Fd()
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETOWN, uintptr(os.Getpid())); e != 0 {
		log.Printf("F_SETOWN on the agent port: %v; polling", e)
		return
	}
	flags, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	if e == 0 {
		_, _, e = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_SETFL, flags|syscall.O_ASYNC)
	}
	if e != 0 {
		log.Printf("O_ASYNC on the agent port: %v; polling", e)
	}
}

var shutdownOnce sync.Once

// shutdown syncs the disks and powers off, halts or reboots. The busybox
// init scheme of this image has nothing to stop cleanly, so this calls
// reboot(2) directly after sync.
func shutdown(mode string) error {
	cmd := syscall.LINUX_REBOOT_CMD_POWER_OFF
	switch mode {
	case "halt":
		cmd = syscall.LINUX_REBOOT_CMD_HALT
	case "reboot":
		cmd = syscall.LINUX_REBOOT_CMD_RESTART
	}
	shutdownOnce.Do(func() {
		go func() {
			log.Printf("shutdown: %s", mode)
			if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
				fmt.Fprintf(c, "vmfest-tiny: %s\n", mode)
				c.Close()
			}
			// Let pending output (and the host) catch up briefly.
			time.Sleep(100 * time.Millisecond)
			// Ask the other processes to exit, then sync and power off.
			syscall.Kill(-1, syscall.SIGTERM)
			time.Sleep(200 * time.Millisecond)
			syscall.Sync()
			if err := syscall.Reboot(cmd); err != nil {
				log.Printf("reboot(%s): %v", mode, err)
			}
		}()
	})
	return nil
}

// watchPowerButton watches all /dev/input/event* devices (rescanning for new
// ones) and powers off on KEY_POWER press.
func watchPowerButton() {
	opened := map[string]bool{}
	var mu sync.Mutex
	for {
		paths, _ := filepath.Glob("/dev/input/event*")
		for _, p := range paths {
			mu.Lock()
			seen := opened[p]
			opened[p] = true
			mu.Unlock()
			if seen {
				continue
			}
			go func(p string) {
				readEvents(p)
				mu.Lock()
				delete(opened, p)
				mu.Unlock()
			}(p)
		}
		time.Sleep(2 * time.Second)
	}
}

const (
	evKey    = 1
	keyPower = 116
)

func readEvents(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	// struct input_event on 64-bit: struct timeval (16 bytes), __u16 type,
	// __u16 code, __s32 value.
	const size = 24
	buf := make([]byte, size*16)
	for {
		n, err := io.ReadAtLeast(f, buf, size)
		if err != nil {
			return
		}
		for off := 0; off+size <= n; off += size {
			ev := buf[off : off+size]
			typ := binary.LittleEndian.Uint16(ev[16:])
			code := binary.LittleEndian.Uint16(ev[18:])
			val := int32(binary.LittleEndian.Uint32(ev[20:]))
			if typ == evKey && code == keyPower && val == 1 {
				log.Printf("power button pressed (%s)", path)
				shutdown("powerdown")
			}
		}
	}
}
