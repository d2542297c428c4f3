//go:build !linux

package qga

import "errors"

var errNotLinux = errors.New("only a Linux guest can be re-identified by its agent")

func listNICs() ([]guestNIC, error) { return nil, errNotLinux }

func setHostname(string, func(string, ...any)) (string, error) { return "", errNotLinux }

func changeMACs([]nicChange, func(string) bool, bool, func(string, ...any)) ([]*dhcpClient, error) {
	return nil, errNotLinux
}

func (a *Agent) restartDHCP([]*dhcpClient) {}
