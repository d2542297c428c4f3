package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vmfest/vmfest/spec"
)

// The operator's settings read from the environment (vmfest serve has a
// flag for each).
const (
	// envNATAllow lists address prefixes, beyond loopback, that nat-rules
	// may listen on (comma-separated; 0.0.0.0/0 allows any).
	envNATAllow = "VMFEST_NAT_ALLOW"
	// envNATLowPorts, when true, lets nat-rules take host ports below 1024.
	envNATLowPorts = "VMFEST_NAT_LOW_PORTS"
)

// parsePrefixes reads address prefixes given as repeated or
// comma-separated values; a bare address stands for itself (/32 or /128).
func parsePrefixes(what string, values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			p, err := netip.ParsePrefix(item)
			if err != nil {
				a, aerr := netip.ParseAddr(item)
				if aerr != nil || a.Zone() != "" {
					return nil, fmt.Errorf("%s %q: give an address prefix such as 192.0.2.0/24 (or 0.0.0.0/0 for any)", what, item)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if p.Addr().Is4In6() {
				return nil, fmt.Errorf("%s %q: an IPv4-mapped IPv6 prefix; write it in IPv4 form, e.g. %s", what, item, p.Addr().Unmap())
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

// natPolicyFromEnv reads the NAT policy from VMFEST_NAT_ALLOW and
// VMFEST_NAT_LOW_PORTS; unset, it is the default (loopback, ports from
// 1024 up).
func natPolicyFromEnv() (spec.NATPolicy, error) {
	var p spec.NATPolicy
	var err error
	if v := os.Getenv(envNATAllow); v != "" {
		if p.HostAddresses, err = parsePrefixes(envNATAllow, []string{v}); err != nil {
			return spec.NATPolicy{}, err
		}
	}
	if v := os.Getenv(envNATLowPorts); v != "" {
		if p.LowPorts, err = strconv.ParseBool(v); err != nil {
			return spec.NATPolicy{}, fmt.Errorf("%s=%q: give true or false", envNATLowPorts, v)
		}
	}
	return p, nil
}
