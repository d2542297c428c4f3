package image

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFetchPolicyCheck(t *testing.T) {
	restricted := FetchPolicy{Restricted: true}
	mirror := FetchPolicy{Restricted: true, Allow: []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("::ffff:192.168.7.0/120"),
	}}
	tests := []struct {
		addr   string
		policy FetchPolicy
		allow  bool
	}{
		{"127.0.0.1", FetchPolicy{}, true}, // the zero value allows everything
		{"10.0.0.1", FetchPolicy{}, true},
		{"8.8.8.8", restricted, true},
		{"2606:4700::1111", restricted, true},
		{"127.0.0.1", restricted, false},
		{"127.9.9.9", restricted, false},
		{"::1", restricted, false},
		{"::ffff:127.0.0.1", restricted, false},
		{"::ffff:10.0.0.1", restricted, false},
		{"::127.0.0.1", restricted, false},
		{"0.0.0.0", restricted, false},
		{"::", restricted, false},
		{"10.0.0.1", restricted, false},
		{"172.16.5.4", restricted, false},
		{"192.168.1.1", restricted, false},
		{"100.64.0.1", restricted, false},
		{"169.254.169.254", restricted, false}, // cloud metadata
		{"fe80::1", restricted, false},
		{"fe80::1%eth0", restricted, false},
		{"fd00::1", restricted, false},
		{"fc00::1", restricted, false},
		{"224.0.0.1", restricted, false},
		{"ff02::1", restricted, false},
		{"255.255.255.255", restricted, false},
		{"240.0.0.1", restricted, false},
		{"198.18.0.1", restricted, false},
		{"64:ff9b::7f00:1", restricted, false},     // NAT64 of 127.0.0.1
		{"64:ff9b::808:808", restricted, true},     // NAT64 of 8.8.8.8
		{"2002:7f00:1::1", restricted, false},      // 6to4 of 127.0.0.1
		{"2002:808:808::1", restricted, true},      // 6to4 of 8.8.8.8
		{"2001:db8::1", restricted, false},         // documentation
		{"2001:0:4136:e378::1", restricted, false}, // Teredo
		{"10.1.2.3", mirror, true},
		{"::ffff:10.1.2.3", mirror, true},
		{"10.2.0.1", mirror, false},
		{"192.168.7.9", mirror, true},
		{"192.168.8.9", mirror, false},
		{"127.0.0.1", mirror, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.addr, tt.policy.Restricted), func(t *testing.T) {
			err := tt.policy.Check(netip.MustParseAddr(tt.addr))
			if tt.allow && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.allow && !errors.Is(err, ErrBlocked) {
				t.Fatalf("allowed (err = %v)", err)
			}
		})
	}
}

// logBuffer is a slog logger writing to a buffer, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// counted counts the requests a handler serves.
type counted struct {
	h    http.Handler
	hits atomic.Int32
}

func (c *counted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.hits.Add(1)
	c.h.ServeHTTP(w, r)
}

// listenOn starts an httptest server on addr (a loopback address).
func listenOn(t *testing.T, addr string, h http.Handler) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// TestRestrictedFetchIsUniform: under a restricted policy a blocked
// address (by IP, by a name that resolves to one, by a redirect), a
// refused connection, an HTTP error and content that is no image all give
// the caller the same message and ErrSource, and nothing is fetched from
// a blocked address; the server's log has the precise cause.
func TestRestrictedFetchIsUniform(t *testing.T) {
	secret := &counted{h: newFiles(map[string][]byte{"x.img": []byte("db_password=hunter2\n")})}
	inner := listenOn(t, "127.0.0.2:0", secret)
	mirrorFiles := newFiles(map[string][]byte{
		"text.img": []byte("db_password=hunter2\n"),
	})
	mirrorMux := http.NewServeMux()
	mirrorMux.Handle("/", mirrorFiles)
	mirrorMux.HandleFunc("/to-inner.img", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, inner.URL+"/x.img", http.StatusFound)
	})
	mirrorMux.HandleFunc("/to-file.img", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
	})
	mirror := listenOn(t, "127.0.0.1:0", mirrorMux)
	refused := listenOn(t, "127.0.0.1:0", http.NotFoundHandler())
	refusedURL := refused.URL
	refused.Close()
	_, mirrorPort, _ := net.SplitHostPort(mirror.Listener.Addr().String())

	policy := FetchPolicy{Restricted: true, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	noAllow := FetchPolicy{Restricted: true}
	tests := []struct {
		name, source, cause string
		policy              *FetchPolicy // default policy
	}{
		{"blocked address", inner.URL + "/x.img", "loopback", nil},
		{"blocked by name", "http://localhost:" + mirrorPort + "/text.img", "loopback", &noAllow},
		{"blocked redirect", mirror.URL + "/to-inner.img", "loopback", nil},
		{"redirect to file", mirror.URL + "/to-file.img", "redirect", nil},
		{"404", mirror.URL + "/missing.img", "404", nil},
		{"connection refused", refusedURL + "/x.img", "refused", nil},
		{"text", mirror.URL + "/text.img", "it is text", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Attempts = 1
			log := &logBuffer{}
			cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
			p := policy
			if tt.policy != nil {
				p = *tt.policy
			}
			before := mirrorFiles.hits["text.img"].Load()
			_, err := prepare(t, cfg, tt.source, Options{Policy: p})
			want := "cannot fetch URL " + tt.source + ": " + errUniform
			if err == nil || err.Error() != want {
				t.Fatalf("err = %v\nwant %s", err, want)
			}
			if !errors.Is(err, ErrSource) {
				t.Errorf("err does not match ErrSource")
			}
			if !strings.Contains(log.String(), tt.cause) {
				t.Errorf("the log does not have the cause %q: %s", tt.cause, log)
			}
			if strings.Contains(log.String(), "hunter2") {
				t.Errorf("the log quotes what was fetched: %s", log)
			}
			if n := secret.hits.Load(); n != 0 {
				t.Errorf("the blocked server was asked %d times", n)
			}
			if tt.policy != nil && mirrorFiles.hits["text.img"].Load() != before {
				t.Errorf("the blocked mirror was asked")
			}
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
}

// TestOpenPolicyRefusesOtherSchemes: even the local user's fetch follows
// no redirect to anything but http and https.
func TestOpenPolicyRefusesOtherSchemes(t *testing.T) {
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
	}))
	cfg := testConfig(t)
	cfg.Attempts = 1
	_, err := prepare(t, cfg, srv.URL+"/x.img", Options{})
	if !errors.Is(err, ErrSource) || !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), `"file"`) {
		t.Fatalf("err = %v, want a refused redirect", err)
	}
}

// rawHTTP is a TCP server on loopback that answers every request with
// response, as written.
func rawHTTP(t *testing.T, response string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				if _, err := http.ReadRequest(r); err != nil {
					return
				}
				io.WriteString(c, response)
			}()
		}
	}()
	return "http://" + l.Addr().String()
}

// TestErrorsQuoteNoFetchedBytes: whatever the server sends (a page, a
// JSON or XML document, a reason phrase, a Content-Range), errors under
// the open policy name what it was, never its bytes.
func TestErrorsQuoteNoFetchedBytes(t *testing.T) {
	const secret = "db_password=hunter2"
	srv := serve(t, newFiles(map[string][]byte{
		"text.img": []byte(secret + "\nmore\n"),
		"page.img": []byte("<!DOCTYPE html><title>" + secret + "</title>"),
		"json.img": []byte(`{"` + secret + `": 1}`),
		"xml.img":  []byte(`<?xml version="1.0"?><Error>` + secret + `</Error>`),
	}))
	reason := rawHTTP(t, "HTTP/1.1 404 "+secret+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	odd := rawHTTP(t, "HTTP/1.1 599 "+secret+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	tests := []struct{ source, says string }{
		{srv.URL + "/text.img", "it is text: a text file of 25 bytes"},
		{srv.URL + "/page.img", "it is text: an HTML page"},
		{srv.URL + "/json.img", "it is text: a JSON document"},
		{srv.URL + "/xml.img", "it is text: an XML document"},
		{reason + "/x.img", "404 Not Found"},
		{odd + "/x.img", "HTTP status 599"},
	}
	for _, tt := range tests {
		t.Run(tt.source, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Attempts = 1
			_, err := prepare(t, cfg, tt.source, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err = %v, want it to say %q", err, tt.says)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "db_password") {
				t.Fatalf("the error quotes what was fetched: %v", err)
			}
		})
	}
}

// TestDownloadCapped: a source larger than MaxDownload is refused when
// the server announces its size and cut off as it streams when it does
// not; the partial download is not kept.
func TestDownloadCapped(t *testing.T) {
	const limit = 1 << 20
	big := bytes.Repeat([]byte{0x55}, 32<<20)
	var sent atomic.Int64
	mux := http.NewServeMux()
	mux.Handle("/sized.raw", newFiles(map[string][]byte{"sized.raw": big}))
	mux.HandleFunc("/chunked.raw", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < len(big); i += 64 << 10 {
			n, err := w.Write(big[i : i+64<<10])
			sent.Add(int64(n))
			if err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	srv := serve(t, mux)
	for _, name := range []string{"sized.raw", "chunked.raw"} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.MaxDownload = limit
			_, err := prepare(t, cfg, srv.URL+"/"+name, Options{})
			if !errors.Is(err, ErrDownloadTooLarge) || !strings.Contains(err.Error(), fmt.Sprint(limit)) {
				t.Fatalf("err = %v, want ErrDownloadTooLarge naming the limit", err)
			}
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
	// The stream was cut: the server could not send all 32 MiB before its
	// writes failed (allowing for what the socket buffers hold).
	if s := sent.Load(); s >= int64(len(big)) {
		t.Errorf("the chunked server sent all %d bytes", s)
	}
}
