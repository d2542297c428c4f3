package vmfest

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/image"
)

// TestSetupModelFetchPolicy: SetupOptions.FetchPolicy reaches the fetch.
// Restricted, a loopback source is refused with the uniform error and
// never asked; with loopback allowed it installs.
func TestSetupModelFetchPolicy(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, 2*time.Minute)
	_, gz := smallDisk(t)
	pub, base := publish(t, map[string][]byte{"p.raw.gz": gz})
	restricted := image.FetchPolicy{Restricted: true}
	_, err := l.SetupModel(ctx, base+"/p.raw.gz", SetupOptions{ID: "p", FetchPolicy: restricted})
	if !errors.Is(err, image.ErrSource) || !strings.Contains(err.Error(), "the server could not reach it or it is not an image") {
		t.Fatalf("restricted: err = %v, want the uniform refusal", err)
	}
	if n := pub.gets["p.raw.gz"].Load(); n != 0 {
		t.Fatalf("restricted: the loopback server was asked %d times", n)
	}
	restricted.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	if _, err := l.SetupModel(ctx, base+"/p.raw.gz", SetupOptions{ID: "p", FetchPolicy: restricted}); err != nil {
		t.Fatalf("restricted, loopback allowed: %v", err)
	}
}
