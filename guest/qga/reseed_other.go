//go:build !linux

package qga

import "errors"

func reseedCRNG([]byte) error { return errors.New("only Linux can reseed its CRNG on request") }
