package vmfest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestVolumeAndISOInGuest boots the tiny guest with a volume and an ISO
// in its storage slots and checks through the guest agent that the guest
// has both: a disk of the volume's size that takes writes and reads them
// back, and a CD-ROM of the ISO's size whose file system, mounted
// read-only, holds the ISO's file. Each is found by its size in
// /sys/block, not by a device name.
func TestVolumeAndISOInGuest(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)

	const volumeSize = 96 << 20
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "scratch", Size: volumeSize}); err != nil {
		t.Fatal(err)
	}
	// Larger than the cloud-init seed (padded to 128 KiB), so the sizes
	// tell the two CD-ROMs apart.
	payload := bytes.Repeat([]byte("vmfest ISO payload\n"), 16<<10)
	iso := testutil.WriteISO(t, filepath.Join(t.TempDir(), "media.iso"), "VMFEST_E2E", map[string][]byte{"payload": payload})
	isoSize := fileSize(t, iso)

	m, err := l.Instance(ctx, "vols", ImageSpec(image), natHardware(),
		WithAttachment(Attachment{Volume: "scratch"}), WithAttachment(Attachment{ISO: iso}))
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Media) != 2 {
		t.Fatalf("Info.Media = %+v, want the volume and the ISO", info.Media)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := m.ConsoleLog(context.Background())
			t.Logf("console:\n%s", b)
		}
	})
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	vol := waitBlockDevice(ctx, t, m, volumeSize)
	ro := waitBlockDevice(ctx, t, m, isoSize)
	t.Logf("the guest has the volume as %s and the ISO as %s", vol, ro)

	// The volume takes a write and reads it back (past the first MiB, so
	// nothing a partition table probe caches).
	out := guestExec(ctx, t, m, nil, fmt.Sprintf(`
		printf 'written through the guest agent' > /tmp/w
		dd if=/tmp/w of=/dev/%[1]s bs=512 seek=4096 conv=notrunc,fsync 2>/dev/null
		echo 3 > /proc/sys/vm/drop_caches
		dd if=/dev/%[1]s bs=512 skip=4096 count=1 2>/dev/null | head -c 31`, vol))
	if string(out) != "written through the guest agent" {
		t.Errorf("read back from the volume: %q", out)
	}
	// The ISO mounts read-only and holds its file.
	out = guestExec(ctx, t, m, nil, fmt.Sprintf(`
		mkdir -p /mnt/iso
		mount -t iso9660 -o ro /dev/%s /mnt/iso
		cat /mnt/iso/payload
		umount /mnt/iso`, ro))
	if !bytes.Equal(out, payload) {
		t.Errorf("the ISO's payload read %d bytes in the guest, want %d", len(out), len(payload))
	}

	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	// The volume outlived its machine, holding what the guest wrote.
	v, err := l.Volume(ctx, "scratch")
	if err != nil || v.Machine != "" || v.Allocated == 0 {
		t.Fatalf("after destroy the volume reads %+v, %v", v, err)
	}
}

// guestExec runs script with sh in the guest and returns its standard
// output, failing the test unless it exits 0.
func guestExec(ctx context.Context, t *testing.T, m Machine, stdin []byte, script string) []byte {
	t.Helper()
	res, err := m.Exec(ctx, ExecRequest{Command: []string{"/bin/sh", "-c", "set -e\n" + script}, Stdin: stdin})
	if err != nil {
		t.Fatalf("exec %s: %v", script, err)
	}
	if res.ExitCode != 0 || res.StdoutTruncated {
		t.Fatalf("exec %s: exit status %d (stdout truncated %v)\nstderr: %s", script, res.ExitCode, res.StdoutTruncated, res.Stderr)
	}
	return res.Stdout
}

// waitBlockDevice waits until the guest has exactly one block device of
// size bytes and returns its name; /sys/block gives sizes in 512-byte
// sectors whatever the device's own block size.
func waitBlockDevice(ctx context.Context, t *testing.T, m Machine, size int64) string {
	t.Helper()
	script := fmt.Sprintf(`for d in /sys/block/*; do [ "$(cat $d/size)" = %d ] && echo ${d##*/}; done; true`, size/512)
	var last string
	for {
		out := strings.Fields(string(guestExec(ctx, t, m, nil, script)))
		if len(out) == 1 {
			return out[0]
		}
		if len(out) > 1 {
			t.Fatalf("more than one block device of %d bytes: %v", size, out)
		}
		last = string(guestExec(ctx, t, m, nil, `for d in /sys/block/*; do echo ${d##*/} $(($(cat $d/size) * 512)); done`))
		select {
		case <-ctx.Done():
			t.Fatalf("no block device of %d bytes in the guest; it has:\n%s", size, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
