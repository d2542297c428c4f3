//go:build !linux

package qga

import "runtime"

func uname() (release, version, machine string) { return "", "", runtime.GOARCH }
