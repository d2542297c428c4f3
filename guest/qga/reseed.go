package qga

import (
	"encoding/base64"
	"encoding/json"
)

// ReseedCommand is the tiny agent's own command (not qemu-ga's): it mixes
// the bytes given as "seed" (base64) into the kernel's input pool,
// crediting them as entropy, and makes the kernel reseed its CRNG from it
// at once. vmfest calls it in a clone resumed from its source's memory,
// whose CRNG state is the source's: a kernel with a vmgenid driver reseeds
// by itself when the generation ID changes; one without (Debian's cloud
// kernel) only at its next periodic reseed, up to a minute later, or, if
// its CRNG was not ready yet when the source was saved, when the pool has
// enough credited entropy.
const ReseedCommand = "vmfest-reseed-crng"

func (a *Agent) reseed(args json.RawMessage) (any, error) {
	var p struct {
		Seed string `json:"seed"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(p.Seed)
	if err != nil {
		return nil, Errorf("Invalid parameter 'seed': %v", err)
	}
	if err := reseedCRNG(seed); err != nil {
		return nil, Errorf("%s: %v", ReseedCommand, err)
	}
	a.logf("%s: %d bytes mixed in, CRNG reseeded", ReseedCommand, len(seed))
	return struct{}{}, nil
}
