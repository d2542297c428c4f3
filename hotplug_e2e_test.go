package vmfest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestHotPlugTinyGuest: a volume attached to the running tiny guest
// appears as a new virtio disk of its size, takes writes, and is gone from
// the guest once detached; what was written is in the volume when it is
// attached again.
func TestHotPlugTinyGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	img := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	const size = 48 << 20
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "hot", Size: size}); err != nil {
		t.Fatal(err)
	}
	m := bootTiny(ctx, t, l, "hp", img, natHardware())
	// The guest's disk of the volume's size, by /sys/block (names move).
	find := fmt.Sprintf(`for b in /sys/block/*; do [ "$(cat $b/size)" = %d ] && echo ${b##*/}; done; true`, size/512)
	waitDisk := func(present bool) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			got := strings.TrimSpace(guestSh(ctx, t, m, find))
			if (got != "") == present {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest's disks of %d bytes: %q after 60 s; want present=%v", size, got, present)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	begun := time.Now()
	at, err := m.Attach(ctx, Attachment{Volume: "hot"})
	if err != nil {
		t.Fatal(err)
	}
	dev := waitDisk(true)
	t.Logf("hot-plugged at %s as /dev/%s, seen by the guest %s after the call began", at, dev, time.Since(begun).Round(time.Millisecond))
	guestSh(ctx, t, m, "printf hot-data | dd of=/dev/"+dev+" bs=512 conv=sync,fsync 2>/dev/null")
	if _, err := m.Detach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	waitDisk(false)
	if _, err := m.Attach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	dev = waitDisk(true)
	if got := guestSh(ctx, t, m, "dd if=/dev/"+dev+" bs=8 count=1 2>/dev/null"); got != "hot-data" {
		t.Fatalf("the volume read back after a detach and attach: %q", got)
	}
	// It stays attached across a power cycle (now part of the hardware).
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	dev = waitDisk(true)
	if got := guestSh(ctx, t, m, "dd if=/dev/"+dev+" bs=8 count=1 2>/dev/null"); got != "hot-data" {
		t.Fatalf("the volume after a restart: %q", got)
	}
}
