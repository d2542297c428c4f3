package qga

import "syscall"

func uname() (release, version, machine string) {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "", "", ""
	}
	return cstr(u.Release[:]), cstr(u.Version[:]), cstr(u.Machine[:])
}

func cstr(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
