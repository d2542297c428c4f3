package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/api/wire"
)

// pathKeys are the JSON keys whose string values name host files in the
// API's request bodies (image and storage locations, attach, setup-model).
var pathKeys = map[string]bool{"location": true, "uuid": true, "disk": true, "iso": true, "source": true}

// checkCallerFiles refuses a request of a Unix socket caller who is not
// this host's user (a member of the socket's group) that names a host file
// the caller could not open themselves: read, and also write for a disk
// the machine will write. The path policy (the models directory and
// --allow-path) still decides which files anyone may name; this adds the
// caller's own rights to it. The file is opened again by the server after
// this check, so a caller who swaps a link meanwhile still reaches only
// what the path policy allows.
func checkCallerFiles(w http.ResponseWriter, r *http.Request, p *peer) error {
	if r.Method != http.MethodPost && r.Method != http.MethodPut && r.Method != http.MethodPatch {
		return nil
	}
	data, err := rereadBody(w, r)
	if err != nil {
		return err
	}
	var body any
	if json.Unmarshal(data, &body) != nil {
		return nil // the handler says what is wrong with it
	}
	readOnly := strings.HasPrefix(r.URL.Path, wire.Prefix+"/models")
	return walkPaths(body, func(key, path string, obj map[string]any) error {
		write := !readOnly && (key == "disk" || ((key == "location" || key == "uuid") && obj["immutable"] != true && obj["device-type"] != "dvd"))
		if err := openAs(p, path, write); err != nil {
			how := "read"
			if write {
				how = "read and write"
			}
			return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
				msg: fmt.Sprintf("%s %q: you (uid %d) cannot %s it: the server uses a file only with its caller's rights (%v)", key, path, p.cred.Uid, how, err)}
		}
		return nil
	})
}

// walkPaths calls fn for every absolute path or file URL under a path key.
func walkPaths(v any, fn func(key, path string, obj map[string]any) error) error {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && pathKeys[k] {
				if u, err := url.Parse(s); err == nil && u.Scheme == "file" {
					s = u.Path
				}
				if filepath.IsAbs(s) {
					if err := fn(k, s, v); err != nil {
						return err
					}
				}
				continue
			}
			if err := walkPaths(x, fn); err != nil {
				return err
			}
		}
	case []any:
		for _, x := range v {
			if err := walkPaths(x, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// openAs opens path as p's process could (its uid, gid and groups as file
// system credentials), then closes it. A missing file is left to the
// handler. It runs on an OS thread of its own whose credentials are
// changed for this and which is never given back: the thread ends with
// the goroutine, and no other goroutine ever runs with those credentials.
func openAs(p *peer, path string, write bool) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		errc <- func() error {
			groups := append([]uint32{p.cred.Gid}, p.groups...)
			// The raw system calls change this thread only (the libc and
			// syscall.Setgroups change every thread).
			if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&groups[0])), 0); e != 0 {
				return fmt.Errorf("setgroups: %w", e)
			}
			unix.RawSyscall(unix.SYS_SETFSGID, uintptr(p.cred.Gid), 0, 0)
			unix.RawSyscall(unix.SYS_SETFSUID, uintptr(p.cred.Uid), 0, 0)
			// setfsuid answers the current value, not an error: ask it back.
			if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(cur) != p.cred.Uid {
				return fmt.Errorf("cannot take uid %d's file rights", p.cred.Uid)
			}
			if cur, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(cur) != p.cred.Gid {
				return fmt.Errorf("cannot take gid %d's file rights", p.cred.Gid)
			}
			flags := unix.O_RDONLY
			if write {
				flags = unix.O_RDWR
			}
			fd, err := unix.Open(path, flags|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			if err != nil {
				return err
			}
			return unix.Close(fd)
		}()
	}()
	return <-errc
}
