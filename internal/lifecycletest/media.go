package lifecycletest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// Media boots a machine of image and hardware hw on srv with a volume and
// an ISO in its storage slots (attached at create) and checks through the
// guest agent that the guest has both: a disk of the volume's size that
// takes a write and reads it back, and a CD-ROM of the ISO's size whose
// file system, mounted read-only, holds the ISO's file. Each is found by
// its size in /sys/block, never by a device name: the same slot is sda on
// one boot and sdb on the next. The volume outlives the machine.
func Media(t *testing.T, srv vmfest.Server, image spec.Image, hw vmfest.Hardware) {
	ctx := ctxTimeout(t, 3*time.Minute)
	const volumeSize = 96 << 20
	if _, err := srv.CreateVolume(ctx, vmfest.VolumeSpec{Name: "scratch", Size: volumeSize}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.RemoveVolume(context.Background(), "scratch") })
	// Larger than the cloud-init seed (padded to 128 KiB), so the sizes
	// tell the two CD-ROMs apart.
	payload := bytes.Repeat([]byte("vmfest ISO payload\n"), 16<<10)
	iso := testutil.WriteISO(t, filepath.Join(t.TempDir(), "media.iso"), "VMFEST_E2E", map[string][]byte{"payload": payload})
	st, err := os.Stat(iso)
	if err != nil {
		t.Fatal(err)
	}

	m, err := srv.Instance(ctx, "media", vmfest.ImageSpec(image), hw,
		vmfest.WithAttachment(vmfest.Attachment{Volume: "scratch"}), vmfest.WithAttachment(vmfest.Attachment{ISO: iso}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := m.ConsoleLog(context.Background())
			t.Logf("console:\n%s", b)
		}
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.PowerDown(cctx)
		m.Destroy(cctx)
	})
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
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	vol := waitBlockDevice(ctx, t, m, volumeSize)
	cd := waitBlockDevice(ctx, t, m, st.Size())
	t.Logf("the guest has the volume as %s and the ISO as %s", vol, cd)

	// The volume takes a write and reads it back from the device, not
	// the page cache.
	const text = "written through the guest agent"
	out := guestExec(ctx, t, m, fmt.Sprintf(`
		printf '%[2]s' > /tmp/w
		dd if=/tmp/w of=/dev/%[1]s bs=512 seek=4096 conv=notrunc,fsync 2>/dev/null
		echo 3 > /proc/sys/vm/drop_caches
		dd if=/dev/%[1]s bs=512 skip=4096 count=1 2>/dev/null | head -c %[3]d`, vol, text, len(text)))
	if string(out) != text {
		t.Errorf("read back from the volume: %q, want %q", out, text)
	}
	// The ISO mounts read-only and holds its file.
	out = guestExec(ctx, t, m, fmt.Sprintf(`
		mkdir -p /mnt/iso
		mount -t iso9660 -o ro /dev/%s /mnt/iso
		cat /mnt/iso/payload
		umount /mnt/iso`, cd))
	if !bytes.Equal(out, payload) {
		t.Errorf("the ISO's payload read %d bytes in the guest, want its %d", len(out), len(payload))
	}

	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := srv.Volume(ctx, "scratch")
	if err != nil || v.Machine != "" || v.Allocated == 0 {
		t.Fatalf("after destroy the volume reads %+v, %v: want it kept, free, holding what the guest wrote", v, err)
	}
}

// guestExec runs script with sh in the guest and returns its standard
// output, failing the test unless it exits 0.
func guestExec(ctx context.Context, t *testing.T, m vmfest.Machine, script string) []byte {
	t.Helper()
	res, err := m.Exec(ctx, vmfest.ExecRequest{Command: []string{"/bin/sh", "-c", "set -e\n" + script}})
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
func waitBlockDevice(ctx context.Context, t *testing.T, m vmfest.Machine, size int64) string {
	t.Helper()
	match := fmt.Sprintf(`for d in /sys/block/*; do [ "$(cat $d/size)" = %d ] && echo ${d##*/}; done; true`, size/512)
	for {
		out := strings.Fields(string(guestExec(ctx, t, m, match)))
		if len(out) == 1 {
			return out[0]
		}
		if len(out) > 1 {
			t.Fatalf("more than one block device of %d bytes: %v", size, out)
		}
		has := guestExec(ctx, t, m, `for d in /sys/block/*; do echo ${d##*/} $(($(cat $d/size) * 512)); done`)
		select {
		case <-ctx.Done():
			t.Fatalf("no block device of %d bytes in the guest; it has:\n%s", size, has)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
