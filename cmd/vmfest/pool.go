package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/pool"
	"github.com/vmfest/vmfest/pool/embedetcd"
)

// poolFlags are the global flags that choose a pool of hosts (--pool)
// instead of one server, and serve's flags that join one.
type poolFlags struct {
	endpoints         string
	host              string
	caCert, cert, key string
	user, password    string
	// hostCACert verifies the hosts' https:// APIs.
	hostCACert string
	// serve's
	advertise      string
	hostID         string
	ttl            time.Duration
	embeddedClient string
	embeddedPeer   string
}

// embeddedPool is --pool's value that runs etcd inside vmfest serve.
const embeddedPool = "embedded"

func (a *app) addPoolFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&a.pool.endpoints, "pool", os.Getenv("VMFEST_POOL"), "drive a pool of hosts whose state is in the etcd cluster at these endpoints (comma-separated host:port or http(s)://host:port; env VMFEST_POOL; see docs/POOL.md); with serve, join this host to it ('embedded': run a one-member etcd in this server)")
	f.StringVar(&a.pool.host, "host", "", "with --pool: the pool host to create on and to send per-host calls to (models, networks, volumes)")
	f.StringVar(&a.pool.caCert, "pool-cacert", os.Getenv("VMFEST_POOL_CACERT"), "with --pool: CA certificate (PEM) of the etcd members")
	f.StringVar(&a.pool.cert, "pool-cert", os.Getenv("VMFEST_POOL_CERT"), "with --pool: client certificate (PEM) for etcd")
	f.StringVar(&a.pool.key, "pool-key", os.Getenv("VMFEST_POOL_KEY"), "with --pool: client key (PEM) for etcd")
	f.StringVar(&a.pool.user, "pool-user", os.Getenv("VMFEST_POOL_USER"), "with --pool: etcd user name (the password from env VMFEST_POOL_PASSWORD)")
	f.StringVar(&a.pool.hostCACert, "pool-host-cacert", os.Getenv("VMFEST_POOL_HOST_CACERT"), "with --pool: CA certificate (PEM) that signed the hosts' API certificates (their serve --tls-cert), for hosts that advertise https:// (default: the system's roots; env VMFEST_POOL_HOST_CACERT)")
	a.pool.password = os.Getenv("VMFEST_POOL_PASSWORD")
}

// hostTLS is the TLS configuration for the pool's https:// hosts from
// --pool-host-cacert; nil without it (the system's roots).
func (f poolFlags) hostTLS() (*tls.Config, error) {
	if f.hostCACert == "" {
		return nil, nil
	}
	data, err := os.ReadFile(f.hostCACert)
	if err != nil {
		return nil, fmt.Errorf("--pool-host-cacert: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("--pool-host-cacert %s: no PEM certificate in it", f.hostCACert)
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

func (a *app) addServePoolFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.pool.advertise, "pool-advertise", "", "with --pool: this host's API URL as the pool's clients reach it (default: http(s)://--listen when it names a host, else unix://--unix)")
	f.StringVar(&a.pool.hostID, "pool-host-id", "", "with --pool: this host's id in the pool (default: its host name)")
	f.DurationVar(&a.pool.ttl, "pool-ttl", pool.DefaultTTL, "with --pool: lease of this host's record; the pool sees the host gone this long after it stops")
	f.StringVar(&a.pool.embeddedClient, "pool-embedded-client", "127.0.0.1:2379", "with --pool embedded: where the embedded etcd takes clients (keep it on loopback)")
	f.StringVar(&a.pool.embeddedPeer, "pool-embedded-peer", "127.0.0.1:2380", "with --pool embedded: the embedded etcd's peer address (loopback)")
}

func (a *app) etcdConfig(endpoints []string) pool.Etcd {
	return pool.Etcd{Endpoints: endpoints, CACert: a.pool.caCert, Cert: a.pool.cert, Key: a.pool.key, Username: a.pool.user, Password: a.pool.password}
}

// poolServer opens the pool at --pool, pinned to --host when given. It
// sends each TCP host the token that matches its fingerprint, from
// --token, VMFEST_TOKEN, VMFEST_POOL_TOKENS (comma-separated) and
// --home's token file.
func (a *app) poolServer() (vmfest.Server, error) {
	if a.remote != "" {
		return nil, usageError{errors.New("--pool and --server are exclusive: a pool reaches its hosts itself")}
	}
	if a.pool.endpoints == embeddedPool {
		return nil, usageError{fmt.Errorf("--pool embedded is for vmfest serve; drive its pool with --pool %s", a.pool.embeddedClientOrDefault())}
	}
	tokens := append([]string{a.token, os.Getenv("VMFEST_TOKEN")}, strings.Split(os.Getenv("VMFEST_POOL_TOKENS"), ",")...)
	if data, err := os.ReadFile(filepath.Join(a.home, api.TokenFile)); err == nil {
		tokens = append(tokens, strings.TrimSpace(string(data)))
	}
	opts := []pool.Option{pool.WithTokens(tokens...)}
	tc, err := a.pool.hostTLS()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, pool.WithHostTLS(tc))
	}
	if a.pool.host != "" {
		opts = append(opts, pool.WithHost(a.pool.host))
	}
	p, err := pool.Connect(a.etcdConfig(pool.ParseEndpoints(a.pool.endpoints)), opts...)
	if err != nil {
		return nil, fmt.Errorf("--pool: %w", err)
	}
	return p, nil
}

func (f poolFlags) embeddedClientOrDefault() string {
	if f.embeddedClient == "" {
		return "127.0.0.1:2379"
	}
	return f.embeddedClient
}

// joinPool joins the served host to the pool at --pool (running the
// embedded etcd first for "embedded"); the returned function leaves it.
func (a *app) joinPool(ctx context.Context, l *vmfest.Local, lc api.Listen) (func(), error) {
	if a.pool.endpoints == "" {
		return func() {}, nil
	}
	url := a.pool.advertise
	if url == "" {
		var err error
		if url, err = advertiseURL(lc); err != nil {
			return nil, err
		}
	}
	var undo []func()
	leave := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	endpoints := pool.ParseEndpoints(a.pool.endpoints)
	if a.pool.endpoints == embeddedPool {
		id := a.pool.hostID
		if id == "" {
			id, _ = os.Hostname()
		}
		for _, addr := range []string{a.pool.embeddedClient, a.pool.embeddedPeer} {
			if h, _, err := net.SplitHostPort(addr); err != nil || !loopbackHost(h) {
				return nil, fmt.Errorf("--pool embedded: %q: give a loopback host:port (the embedded etcd has no TLS or authentication)", addr)
			}
		}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		m, err := embedetcd.Start(sctx, embedetcd.Config{
			Name:      id,
			Dir:       filepath.Join(l.Home(), "etcd"),
			ClientURL: "http://" + a.pool.embeddedClient,
			PeerURL:   "http://" + a.pool.embeddedPeer,
		})
		cancel()
		if err != nil {
			return nil, err
		}
		undo = append(undo, m.Close)
		endpoints = m.Endpoints()
		fmt.Fprintf(a.errOut, "embedded etcd for the pool: --pool %s\n", strings.Join(endpoints, ","))
	}
	cli, err := pool.NewClient(a.etcdConfig(endpoints))
	if err != nil {
		leave()
		return nil, fmt.Errorf("--pool: %w", err)
	}
	undo = append(undo, func() { cli.Close() })
	tok := ""
	if strings.HasPrefix(url, "http") {
		if tok, err = api.LoadToken(lc.TokenFile); err != nil {
			leave()
			return nil, err
		}
	}
	// The accelerator this host's machines get: both drivers choose it
	// with qemu.ChooseAccel from VMFEST_ACCEL and the host's KVM.
	accel, _, err := qemu.ChooseAccel(os.Getenv("VMFEST_ACCEL"), qemu.DefaultHost())
	if err != nil {
		leave()
		return nil, fmt.Errorf("VMFEST_ACCEL: %w", err)
	}
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	h, err := pool.Join(jctx, cli, pool.HostConfig{
		ID: a.pool.hostID, URL: url, Token: tok, Server: l, Home: l.Home(),
		Accel: accel, TTL: a.pool.ttl, Logger: a.serveLogger(),
	})
	if err != nil {
		leave()
		return nil, fmt.Errorf("--pool: %w", err)
	}
	undo = append(undo, func() {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := h.Leave(lctx); err != nil {
			fmt.Fprintln(a.errOut, "warning:", err)
		}
	})
	fmt.Fprintf(a.errOut, "joined the pool as host %s, reachable at %s\n", h.ID(), url)
	return leave, nil
}

// advertiseURL is the API URL of a served host when --pool-advertise is
// not given: its TCP address when that names a host, else its socket.
func advertiseURL(lc api.Listen) (string, error) {
	if lc.TCP != "" {
		host, port, err := net.SplitHostPort(lc.TCP)
		if err != nil {
			host, port = lc.TCP, fmt.Sprint(vmfest.DefaultServerPort)
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return "", fmt.Errorf("--listen %s names no one address: give --pool-advertise URL, the address the pool's clients reach this host at", lc.TCP)
		}
		scheme := "http"
		if lc.TLSCert != "" {
			scheme = "https"
		}
		return scheme + "://" + net.JoinHostPort(host, port), nil
	}
	if lc.Unix != "" {
		return "unix://" + lc.Unix, nil
	}
	return "", errors.New("--pool: this server listens nowhere the pool can reach: give --listen (or --unix) and --pool-advertise")
}

func (a *app) poolCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
		Short: "Inspect and steer a pool of hosts (--pool)",
		Long: `Inspect and steer the pool of hosts at --pool (etcd endpoints).

Hosts join a pool with 'vmfest serve --pool ENDPOINTS --listen ADDR'. Every
command then works on the pool with --pool instead of --server: create
places the machine on a host (the one with the most memory not committed
to its machines, among those that hold its image model; --host pins one)
and reserves its name pool-wide; the other commands go to the machine's
host. See docs/POOL.md.`,
	}
	cmd.AddCommand(a.poolHostsCommand(), a.poolDrainCommand(), a.poolForgetCommand())
	return cmd
}

// openPool is the Pool of --pool, for the pool subcommands.
func (a *app) openPool() (*pool.Pool, error) {
	if a.pool.endpoints == "" {
		return nil, usageError{errors.New("give the pool's etcd endpoints: --pool host:port,... (or VMFEST_POOL)")}
	}
	srv, err := a.poolServer()
	if err != nil {
		return nil, err
	}
	return srv.(*pool.Pool), nil
}

func (a *app) poolHostsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hosts",
		Short: "List the pool's hosts: capacity, load and health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.openPool()
			if err != nil {
				return err
			}
			defer p.Close()
			hs, err := p.Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(hs)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tHEALTH\tCPUS\tMEMORY\tCOMMITTED\tMACHINES\tRUNNING\tFREE-DISK\tACCEL\tMODELS\tURL")
			for _, h := range hs {
				health := "ok"
				switch {
				case !h.Live:
					health = "gone"
				case !h.Answers:
					health = "no-answer"
				}
				if h.Draining {
					health += ",draining"
				}
				if len(h.Conflicts) > 0 {
					health += fmt.Sprintf(",%d-conflicts", len(h.Conflicts))
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%dM\t%dM\t%d\t%d\t%s\t%s\t%s\t%s\n", h.ID, health, h.CPUs, h.MemoryMiB, h.CommittedMiB, h.Reserved, h.Running, gib(h.FreeDisk), dash(h.Accel), dash(strings.Join(h.Models, ",")), dash(h.URL))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, h := range hs {
				if h.Error != "" {
					fmt.Fprintf(a.errOut, "host %s: %s\n", h.ID, oneLine(h.Error))
				}
			}
			return nil
		},
	}
}

func gib(b int64) string { return fmt.Sprintf("%.1fG", float64(b)/(1<<30)) }

func (a *app) poolDrainCommand() *cobra.Command {
	var undo bool
	cmd := &cobra.Command{
		Use:   "drain HOST [--undo]",
		Short: "Stop placing new machines on a host (its machines stay and keep working)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.openPool()
			if err != nil {
				return err
			}
			defer p.Close()
			if err := p.Drain(cmd.Context(), args[0], !undo); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"host": args[0], "draining": !undo})
			}
			if undo {
				fmt.Fprintf(a.out, "host %s takes new machines again\n", args[0])
			} else {
				fmt.Fprintf(a.out, "host %s takes no new machines\n", args[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&undo, "undo", false, "let the host take new machines again")
	return cmd
}

func (a *app) poolForgetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "forget HOST",
		Short: "Release the machine names of a host that is gone for good",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.openPool()
			if err != nil {
				return err
			}
			defer p.Close()
			n, err := p.Forget(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"host": args[0], "released": n})
			}
			fmt.Fprintf(a.out, "released %d machine names of host %s\n", n, args[0])
			return nil
		},
	}
}
