// Package pool puts many vmfest hosts behind one vmfest.Server, with the
// pool's state in etcd: each host registers itself under a lease it keeps
// alive (Join), and a Pool (Connect) places machines on hosts, reserves
// their names pool-wide in etcd transactions, and routes every call on a
// machine to the `vmfest serve` of the host that owns it. etcd is the only
// consensus: vmfest adds none. See docs/POOL.md.
package pool

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/vmfest/vmfest"
)

// DefaultPrefix is where the pool's keys live in etcd.
const DefaultPrefix = "/vmfest/"

// Unreachable is the state the pool reports for a machine whose host is
// gone (its lease ran out) or does not answer: the machine is not
// deleted, its host is only out of reach.
const Unreachable vmfest.State = "unreachable"

// DefaultTTL is the lease of a host's record: a host that stops renewing
// it (killed, cut off) disappears from the pool within this time.
const DefaultTTL = 10 * time.Second

// DefaultStaleReservation bounds how long a name stays reserved for a
// create that never finished (its client died half-way): the owning host
// releases such a reservation once it is older and the host has no such
// machine.
const DefaultStaleReservation = 10 * time.Minute

// Reservation states.
const (
	// Creating: the name is reserved and the create is under way on the
	// host.
	Creating = "creating"
	// Created: the host has the machine.
	Created = "created"
)

// HostRecord is what a host publishes about itself, at
// <prefix>hosts/<id>, under its lease.
type HostRecord struct {
	ID string `json:"id"`
	// URL is the host's API as others reach it (vmfest serve --listen,
	// or unix:// for hosts of one machine).
	URL string `json:"url"`
	// TokenSHA256 is the hex SHA-256 of the host's bearer token: a client
	// sends a host only the token that matches it. Never the token.
	TokenSHA256 string `json:"token-sha256,omitempty"`
	CPUs        int    `json:"cpus"`
	// MemoryMiB is the host's RAM, AvailableMiB what the kernel reports
	// available now (MemAvailable).
	MemoryMiB    int64 `json:"memory-mib"`
	AvailableMiB int64 `json:"available-mib"`
	// FreeDisk is the free space of the host's state directory, in bytes.
	FreeDisk int64  `json:"free-disk"`
	Accel    string `json:"accel,omitempty"`
	// Models are the ids of the image models the host holds.
	Models []string `json:"models,omitempty"`
	// Machines and Running count the host's machines.
	Machines int `json:"machines"`
	Running  int `json:"running"`
	// Conflicts names machines of this host whose name the pool has
	// reserved for another host (made on the host directly).
	Conflicts []string  `json:"conflicts,omitempty"`
	Updated   time.Time `json:"updated"`
}

// Reservation is the pool-wide claim on a machine name, at
// <prefix>machines/<name>. It has no lease: it outlives its host, so that
// a host that is gone still has its machines reported (Unreachable).
type Reservation struct {
	Host string `json:"host"`
	// State is Creating or Created; the machine's run state is read from
	// its host.
	State string `json:"state"`
	// MemoryMiB is the machine's memory, counted against its host by the
	// placement policy.
	MemoryMiB int64     `json:"memory-mib,omitempty"`
	Since     time.Time `json:"since"`
}

// keys is the pool's key layout under one prefix.
type keys struct{ prefix string }

func newKeys(prefix string) keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return keys{prefix: prefix}
}

func (k keys) hosts() string              { return k.prefix + "hosts/" }
func (k keys) host(id string) string      { return k.hosts() + id }
func (k keys) machines() string           { return k.prefix + "machines/" }
func (k keys) machine(name string) string { return k.machines() + name }
func (k keys) drains() string             { return k.prefix + "drain/" }
func (k keys) drain(id string) string     { return k.drains() + id }

// TokenFingerprint is the hex SHA-256 of a bearer token.
func TokenFingerprint(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func decode[T any](what string, key, value []byte) (T, error) {
	var v T
	if err := json.Unmarshal(value, &v); err != nil {
		return v, fmt.Errorf("pool record %s: %w", key, err)
	}
	return v, nil
}
