// Package testutil holds what vmfest's tests share: blank disks, file
// checksums, the tiny guest image, and the cleanup that kills every QEMU a
// test's state directory started. Only _test.go files import it.
package testutil

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// BlankSize is the size of a blank disk: enough for QEMU to run, not for a
// guest to boot.
const BlankSize = 1 << 20

// BlankDisk writes a BlankSize raw disk of zeros with no OS at path with
// permissions perm (0o444 for an immutable base, 0o644 for a mutable one)
// and returns path.
func BlankDisk(t testing.TB, path string, perm os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, BlankSize), perm); err != nil {
		t.Fatal(err)
	}
	return path
}

// BootSectorDisk writes a 1 MiB raw disk whose first sector ends in the
// MBR boot signature (what the image inspector takes for a raw disk) at
// path, and returns path.
func BootSectorDisk(t testing.TB, path string) string {
	t.Helper()
	data := make([]byte, 1<<20)
	data[510], data[511] = 0x55, 0xaa
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// BlankImage writes a read-only blank disk named name in dir and returns
// its spec, immutable.
func BlankImage(t testing.TB, dir, name string) spec.Image {
	t.Helper()
	return spec.Image{Location: BlankDisk(t, filepath.Join(dir, name), 0o444), Immutable: true}
}

// SumFile returns the hex SHA-256 of the file at path.
func SumFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// MustSumFile is SumFile that fails t on error.
func MustSumFile(t testing.TB, path string) string {
	t.Helper()
	sum, err := SumFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// KillMachines kills the QEMU of every machine in the state directory home
// and waits (at most 10 s each) until it has exited. Errors are ignored:
// it is a cleanup, run whether the test passed or not.
func KillMachines(home string) {
	machines := filepath.Join(home, store.MachinesDir)
	entries, _ := os.ReadDir(machines)
	for _, e := range entries {
		dir := filepath.Join(machines, e.Name())
		qemu.Kill(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		qemu.WaitExit(ctx, dir)
		cancel()
	}
}

// TinyImageMeta returns the path of the tiny guest image's metadata
// ($VMFEST_TEST_IMAGE, else build/vmfest-tiny.meta at the module's root).
// It skips the test under -short, since the test boots a real guest, and
// fails it when the image is missing.
func TinyImageMeta(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a real guest; skipped with -short")
	}
	meta := os.Getenv("VMFEST_TEST_IMAGE")
	if meta == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		meta = filepath.Join(root, "build", "vmfest-tiny.meta")
	}
	if _, err := os.Stat(meta); err != nil {
		t.Fatalf("the tiny guest image is needed (run `make image`): %v", err)
	}
	return meta
}

// TinyImage returns the tiny guest's image spec (see TinyImageMeta), its
// location made absolute.
func TinyImage(t testing.TB) spec.Image {
	t.Helper()
	meta := TinyImageMeta(t)
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(im.Location) {
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(meta), im.Location))
		if err != nil {
			t.Fatal(err)
		}
		im.Location = abs
	}
	return im
}

// moduleRoot is the nearest directory at or above the working directory
// (a test's package directory) that holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or above it")
		}
		dir = parent
	}
}

// SelfSigned writes a self-signed certificate for 127.0.0.1 (its own CA)
// and its key into a temporary directory, and returns their paths and a
// pool that trusts the certificate.
func SelfSigned(t testing.TB) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "vmfest test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}

// LoopbackPorts returns n TCP ports on 127.0.0.1 that are free now (each
// was bound, then all released together, so they differ).
func LoopbackPorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, n)
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out[i] = l.Addr().(*net.TCPAddr).Port
	}
	return out
}
