package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/pool"
	"github.com/vmfest/vmfest/spec"
)

func (a *app) createCommand() *cobra.Command {
	var image, hardware, diskSize, userData string
	var memory, cpus int
	var keyFiles, labels, volumes, isos, disks []string
	cmd := &cobra.Command{
		Use:     "create NAME --image MODEL|SPEC-FILE|DISK [--hardware MODEL|FILE]",
		Aliases: []string{"instance"},
		Short:   "Create a powered-off machine from an image and hardware",
		Long: `Create a powered-off machine.

--image is an installed image model id, an image spec file (YAML or JSON; its
location is relative to the file), or a disk image file. A disk given alone
is immutable when the file is read-only: the machine gets a copy-on-write
overlay. A writable disk is used directly and deleted with the machine.

--hardware is a hardware model name (see 'vmfest hardware list') or a
hardware spec file. --memory, --cpus and --disk-size override it.
--disk-size (512M, 20G, 1T) makes the machine's overlay larger than the
image; cloud-init's growpart grows the root file system on first boot.

--volume, --iso and --disk put a volume (vmfest volume create), an ISO
(read-only) or a disk image of your own (written, never deleted by vmfest)
in the hardware's first free storage slots, in the order given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if image == "" {
				return usageError{errors.New("--image is required: an image model id, an image spec file or a disk image")}
			}
			img, warn, err := imageChoice(image)
			if err != nil {
				return err
			}
			if img.SSHKeys, err = sshKeys(keyFiles); err != nil {
				return err
			}
			if img.SSHKeys, err = a.withOwnKey(img.SSHKeys); err != nil {
				return err
			}
			// 0 is "not given" to hardwareChoice: given, it is as
			// wrong as -5.
			if cmd.Flags().Changed("memory") && memory <= 0 {
				return usageError{fmt.Errorf("--memory %d: must be a positive number of MiB", memory)}
			}
			if cmd.Flags().Changed("cpus") && cpus <= 0 {
				return usageError{fmt.Errorf("--cpus %d: must be at least 1", cpus)}
			}
			var size spec.Size
			if diskSize != "" {
				if size, err = spec.ParseSize(diskSize); err != nil || size == 0 {
					if err == nil {
						err = errors.New("must be more than 0")
					}
					return usageError{fmt.Errorf("--disk-size %s: %w", diskSize, err)}
				}
			}
			hw, err := hardwareChoice(ctx, srv, hardware, memory, cpus, size)
			if err != nil {
				return err
			}
			var opts []vmfest.InstanceOption
			if a.driver != "" {
				opts = append(opts, vmfest.WithDriver(a.driver))
			}
			if len(labels) > 0 {
				set := map[string]string{}
				for _, l := range labels {
					k, v, _, err := vmfest.ParseLabel(l, false)
					if err != nil {
						return usageError{fmt.Errorf("--label: %w", err)}
					}
					set[k] = v
				}
				opts = append(opts, vmfest.WithLabels(set))
			}
			if userData != "" {
				data, err := os.ReadFile(userData)
				if err != nil {
					return fileError("--user-data", userData, err)
				}
				opts = append(opts, vmfest.WithUserData(data))
			}
			for _, v := range volumes {
				opts = append(opts, vmfest.WithAttachment(vmfest.Attachment{Volume: v}))
			}
			for _, p := range isos {
				abs, err := filepath.Abs(p)
				if err != nil {
					return err
				}
				opts = append(opts, vmfest.WithAttachment(vmfest.Attachment{ISO: abs}))
			}
			for _, p := range disks {
				abs, err := filepath.Abs(p)
				if err != nil {
					return err
				}
				opts = append(opts, vmfest.WithAttachment(vmfest.Attachment{Disk: abs}))
			}
			begun := time.Now()
			m, err := srv.Instance(ctx, args[0], img, hw, opts...)
			if err != nil {
				return err
			}
			took := time.Since(begun)
			if warn != "" {
				fmt.Fprintln(a.errOut, "warning: "+warn)
			}
			info, err := m.Info(ctx)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(info)
			}
			fmt.Fprintf(a.out, "created %s (image %s, hardware %s) in %s\n", info.Name, info.Image, info.Hardware, took.Round(time.Microsecond*100))
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "image model id, image spec file or disk image")
	cmd.Flags().StringVar(&hardware, "hardware", "micro", "hardware model name or hardware spec file")
	cmd.Flags().IntVar(&memory, "memory", 0, "memory in MiB (overrides the hardware)")
	cmd.Flags().IntVar(&cpus, "cpus", 0, "virtual CPUs (overrides the hardware)")
	cmd.Flags().StringVar(&diskSize, "disk-size", "", "virtual size of the machine's disk, larger than the image's: 512M, 20G, 1T (overrides the hardware)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "a key=value label (repeatable); list --label filters by them")
	cmd.Flags().StringVar(&userData, "user-data", "", "cloud-init user-data file (#cloud-config, a #! script or a MIME multipart), passed to cloud-init whole beside vmfest's own settings")
	cmd.Flags().StringArrayVar(&volumes, "volume", nil, "a volume to attach (repeatable; vmfest volume create makes one)")
	cmd.Flags().StringArrayVar(&isos, "iso", nil, "an ISO image to put in a dvd slot, read-only (repeatable)")
	cmd.Flags().StringArrayVar(&disks, "disk", nil, "a disk image of yours (qcow2 or raw) to attach writable; never deleted by vmfest (repeatable)")
	cmd.Flags().StringArrayVar(&keyFiles, "ssh-key", nil, "OpenSSH public key file whose keys may log in (cloud-init images; repeatable)")
	return cmd
}

// imageFileWants says what a file given to --image must be.
const imageFileWants = "must be a disk image (raw or qcow2) or an image spec (YAML or JSON with a location key)"

// fileError words a failure to read the file a flag names: "file not
// found" for a missing one.
func fileError(flag, path string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fileNotFound(fmt.Sprintf("%s %s: file not found", flag, path))
	}
	return fmt.Errorf("%s %s: %w", flag, path, err)
}

// fileNotFound is a missing file, worded for the user; it is
// os.ErrNotExist ("not-found" under --json).
type fileNotFound string

func (e fileNotFound) Error() string        { return string(e) }
func (e fileNotFound) Is(target error) bool { return target == os.ErrNotExist }

// imageChoice reads --image: a spec file, a disk, or a model id.
func imageChoice(arg string) (vmfest.Image, string, error) {
	st, err := os.Stat(arg)
	if err != nil {
		if strings.ContainsRune(arg, '/') || errors.Is(err, os.ErrPermission) {
			return vmfest.Image{}, "", fileError("--image", arg, err)
		}
		return vmfest.ImageModel(arg), "", nil
	}
	if st.IsDir() {
		return vmfest.Image{}, "", usageError{fmt.Errorf("--image %s: is a directory; it %s", arg, imageFileWants)}
	}
	if isSpecFile(arg) {
		data, err := os.ReadFile(arg)
		if err != nil {
			return vmfest.Image{}, "", fileError("--image", arg, err)
		}
		var fields map[string]any
		if yaml.Unmarshal(data, &fields) != nil || fields == nil {
			// Text, but not a YAML or JSON mapping: the parser's
			// message ("want a spec.imageFields, got a string")
			// would say nothing to the user.
			return vmfest.Image{}, "", usageError{fmt.Errorf("--image %s: %s, and it is neither", arg, imageFileWants)}
		}
		im, err := spec.ParseImage(data)
		if err != nil {
			return vmfest.Image{}, "", fmt.Errorf("--image %s: %w", arg, err)
		}
		if im.Location != "" && !filepath.IsAbs(im.Location) {
			im.Location = filepath.Join(filepath.Dir(arg), im.Location)
		}
		return vmfest.ImageSpec(im), mutableWarning(im), nil
	}
	im := spec.Image{Location: arg, Immutable: st.Mode().Perm()&0o222 == 0}
	return vmfest.ImageSpec(im), mutableWarning(im), nil
}

func mutableWarning(im spec.Image) string {
	if im.Immutable {
		return ""
	}
	return fmt.Sprintf("image %s is not immutable: the machine writes to it directly and destroying the machine deletes it, unless destroy --keep-disk (make it read-only, or set immutable: true, to share it through overlays)", im.Location)
}

// isSpecName reports a name that ends as a spec file's does.
func isSpecName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".meta", ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// isSpecFile tells an image spec file from a disk image by its name, then
// by its first bytes (specs are text).
func isSpecFile(path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".meta", ".yaml", ".yml", ".json":
		return true
	case ".qcow2", ".img", ".raw":
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	return n > 0 && !bytes.ContainsRune(head, 0) && !bytes.HasPrefix(head, []byte(disk.QCOW2Magic))
}

// hardwareChoice reads --hardware, with --memory, --cpus and --disk-size
// laid over it when they are not 0 (create refuses values below 1 first).
func hardwareChoice(ctx context.Context, srv vmfest.Server, arg string, memory, cpus int, diskSize spec.Size) (vmfest.Hardware, error) {
	var base spec.Hardware
	fromFile := false
	st, err := os.Stat(arg)
	if err != nil && (strings.ContainsRune(arg, '/') || isSpecName(arg)) {
		// A path, not a model name (unless a model has that name).
		if _, merr := srv.HardwareModel(ctx, arg); strings.ContainsRune(arg, '/') || merr != nil {
			return vmfest.Hardware{}, fileError("--hardware", arg, err)
		}
	}
	if err == nil && !st.IsDir() {
		data, err := os.ReadFile(arg)
		if err != nil {
			return vmfest.Hardware{}, fileError("--hardware", arg, err)
		}
		if base, err = spec.ParseHardware(data); err != nil {
			return vmfest.Hardware{}, fmt.Errorf("--hardware %s: %w", arg, err)
		}
		fromFile = true
	}
	if memory == 0 && cpus == 0 && diskSize == 0 {
		if fromFile {
			return vmfest.HardwareSpec(base), nil
		}
		return vmfest.HardwareModel(arg), nil
	}
	if !fromFile {
		h, err := srv.HardwareModel(ctx, arg)
		if err != nil {
			return vmfest.Hardware{}, err
		}
		base = h
	}
	if memory > 0 {
		base.MemorySize = memory
	}
	if cpus > 0 {
		base.CPUCount = cpus
	}
	if diskSize > 0 {
		base.DiskSize = diskSize
	}
	return vmfest.HardwareSpec(base), nil
}

// eachMachine runs fn on every named machine, reporting each failure and
// returning an error if any failed. fn returns the machine's Info as the
// command leaves it (destroy: as it was just before it went); a nil Info
// means "read it now". Under --json it prints that Info as show --json
// does, or an array of them, in the order given, when several names were
// given; machines that failed are left out and their errors are JSON on
// stderr.
func (a *app) eachMachine(cmd *cobra.Command, names []string, verb string, fn func(m vmfest.Machine) (*vmfest.Info, error)) error {
	srv, err := a.server()
	if err != nil {
		return err
	}
	return eachNamed(a, names, "machines", func(n string) (vmfest.Info, error) {
		var info *vmfest.Info
		m, err := srv.FindMachine(cmd.Context(), n)
		if err == nil {
			info, err = fn(m)
		}
		var already errAlready
		if errors.As(err, &already) {
			err = nil
			if !a.json {
				fmt.Fprintf(a.out, "%s is already %s\n", n, already.state)
			}
		} else if err == nil && !a.json {
			fmt.Fprintf(a.out, "%s %s\n", verb, n)
		}
		if err != nil || info != nil || !a.json {
			if info == nil {
				return vmfest.Info{}, err
			}
			return *info, err
		}
		return m.Info(cmd.Context())
	})
}

// eachNamed runs fn on every name, all at once (start a b c boots the
// three together, as VMFest's tutorial pmap-starts them), and waits for
// all. A failure with one name is the error; with several, the error is a
// failures that names each one that failed with its cause (printError
// prints each cause once). Under --json it prints what fn returned, an
// object for one name and an array, in the order given, for several.
// fn must be safe to run concurrently; a.out and a.errOut are.
func eachNamed[T any](a *app, names []string, what string, fn func(name string) (T, error)) error {
	vals := make([]T, len(names))
	errs := make([]error, len(names))
	if len(names) == 1 {
		vals[0], errs[0] = fn(names[0])
		if errs[0] != nil {
			return errs[0]
		}
	} else {
		var wg sync.WaitGroup
		for i, n := range names {
			wg.Go(func() { vals[i], errs[i] = fn(n) })
		}
		wg.Wait()
	}
	f := failures{what: what, total: len(names)}
	done := []T{}
	for i, n := range names {
		if errs[i] != nil {
			f.names = append(f.names, n)
			f.errs = append(f.errs, errs[i])
			continue
		}
		done = append(done, vals[i])
	}
	if a.json {
		var err error
		if len(names) == 1 {
			err = a.printJSON(done[0])
		} else {
			err = a.printJSON(done)
		}
		if err != nil {
			return err
		}
	}
	if len(f.errs) > 0 {
		return f
	}
	return nil
}

// simpleCommand is pause, resume or power-down: fn takes each machine to
// the state target, and a machine already there is left alone (see
// makeItSo).
func (a *app) simpleCommand(use, short string, target vmfest.State, fn func(cmd *cobra.Command, m vmfest.Machine) error) *cobra.Command {
	past := map[string]string{"pause": "paused", "resume": "resumed", "power-down": "powered down"}[use]
	return &cobra.Command{
		Use:   use + " NAME...",
		Short: short,
		Long:  fmt.Sprintf("%s.\n\nA machine that is already %s is left so: vmfest says so and, for it, exits 0.", short, target),
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachMachine(cmd, args, past, func(m vmfest.Machine) (*vmfest.Info, error) {
				return nil, a.makeItSo(cmd.Context(), m, target, func() error { return fn(cmd, m) })
			})
		},
	}
}

// errAlready tells eachMachine that the machine was already in the state
// asked for: not a failure, and said as such.
type errAlready struct{ state vmfest.State }

func (e errAlready) Error() string { return "already " + string(e.state) }

// makeItSo runs op, which takes m to target, and makes it idempotent as
// docker stop is: when op is refused for m's state (ErrWrongState) and m
// is in target already, that is success (errAlready). The state is read
// after the refusal, so a machine that reached target meanwhile counts too.
func (a *app) makeItSo(ctx context.Context, m vmfest.Machine, target vmfest.State, op func() error) error {
	err := op()
	if err == nil || !errors.Is(err, vmfest.ErrWrongState) {
		return err
	}
	if st, serr := m.State(ctx); serr == nil && st == target {
		return errAlready{st}
	}
	return err
}

func (a *app) startCommand() *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "start NAME... [--wait [DUR]]",
		Short: "Start machines; with --wait, until their guest agents answer",
		Long: `Start machines, all at once. With --wait, wait until every one's guest
agent answers, at most 2m, or DUR: --wait 30s and --wait=30s both give the
duration (a duration right after --wait is its value, never a machine name).
Ctrl-C during --wait stops the waiting, not the machines: they keep booting.

With several names, each failure is printed once, in a summary that names
every machine that failed and why; the exit status is then 1.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachMachine(cmd, args, "started", func(m vmfest.Machine) (*vmfest.Info, error) {
				begun := time.Now()
				if err := m.Start(cmd.Context()); err != nil {
					return nil, err
				}
				if wait <= 0 {
					return nil, nil
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), wait)
				defer cancel()
				if err := m.WaitReady(ctx); err != nil {
					return nil, waitReadyError(cmd.Context(), m.Name(), wait, err)
				}
				if !a.json {
					fmt.Fprintf(a.out, "%s ready in %s\n", m.Name(), time.Since(begun).Round(10*time.Millisecond))
				}
				return nil, nil
			})
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait until the guest agent answers, at most this long (--wait 30s or --wait=30s; 2m when given without a value)")
	cmd.Flags().Lookup("wait").NoOptDefVal = "2m"
	return cmd
}

// waitReadyError words the failure of start --wait: on Ctrl-C (parent
// canceled) the machine keeps booting, which "timed out" would hide; on
// --wait's deadline, how long that was.
func waitReadyError(parent context.Context, name string, wait time.Duration, err error) error {
	if errors.Is(parent.Err(), context.Canceled) {
		return fmt.Errorf("machine %s: %w: interrupted while waiting for its guest agent; the machine keeps booting ('vmfest stop %s' stops it)", name, context.Canceled, name)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, vmfest.ErrTimeout) {
		return fmt.Errorf("%w (--wait %s); the machine keeps booting", err, wait)
	}
	return err
}

func (a *app) stopCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME... [--timeout DUR]",
		Short: "Press the ACPI power button and wait until the guests power off",
		Long: `Press the ACPI power button and wait until the guests power off.

A machine that is already powered off is left so: vmfest says so and, for
it, exits 0 (as docker stop does), so scripts can "make it so".`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachMachine(cmd, args, "stopped", func(m vmfest.Machine) (*vmfest.Info, error) {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				begun := time.Now()
				err := a.makeItSo(ctx, m, vmfest.PoweredOff, func() error { return m.Stop(ctx) })
				used := time.Since(begun).Round(time.Millisecond)
				switch {
				case errors.Is(err, context.DeadlineExceeded):
					// The deadline ran out in a step before the wait
					// for the guest, or on the client's side of a
					// --server: nothing said how long it was.
					err = fmt.Errorf("stop machine %s: %w after %s (--timeout %s), before the guest powered off; it may still be running (power-down forces it off): %w",
						m.Name(), vmfest.ErrTimeout, used, timeout, err)
				case errors.Is(err, vmfest.ErrTimeout) && ctx.Err() != nil:
					// The guest did not power off in time; the root's
					// message rounds the time to 100ms.
					err = fmt.Errorf("%w; --timeout %s ran out after %s", err, timeout, used)
				}
				return nil, err
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", vmfest.DefaultStopTimeout, "how long to wait for the guest to power off")
	return cmd
}

func (a *app) destroyCommand() *cobra.Command {
	var force, keepDisk bool
	cmd := &cobra.Command{
		Use:   "destroy NAME... [--force] [--keep-disk]",
		Short: "Remove machines and their overlays",
		Long:  "Remove powered-off machines and their overlays. A machine whose image is not immutable takes its disk with it (vmfest says which file), unless --keep-disk. --force powers a running machine down first.",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachMachine(cmd, args, "destroyed", func(m vmfest.Machine) (*vmfest.Info, error) {
				ctx := cmd.Context()
				if force {
					st, err := m.State(ctx)
					if err != nil {
						return nil, err
					}
					if st == vmfest.Running || st == vmfest.Paused || st == vmfest.Stopping {
						if err := m.PowerDown(ctx); err != nil {
							return nil, err
						}
					}
				}
				// The machine as it was just before it went: what
				// --json prints of it, and whose disk goes with it.
				i, err := m.Info(ctx)
				if err != nil {
					return nil, err
				}
				var opts []vmfest.DestroyOption
				if keepDisk {
					opts = append(opts, vmfest.KeepDisk())
				}
				err = m.Destroy(ctx, opts...)
				if errors.Is(err, vmfest.ErrWrongState) && !force {
					return nil, fmt.Errorf("%w; use --force to power it down first", err)
				}
				if err == nil && i.BaseImage == "" && !a.json {
					// Its disk is the image itself, not an overlay.
					if keepDisk {
						fmt.Fprintf(a.out, "kept %s's disk %s\n", m.Name(), i.Disk)
					} else {
						fmt.Fprintf(a.out, "deleted %s's disk %s with it (its image is not immutable; --keep-disk keeps it)\n", m.Name(), i.Disk)
					}
				}
				if !a.json {
					return nil, err
				}
				return &i, err
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "power running machines down first")
	cmd.Flags().BoolVar(&keepDisk, "keep-disk", false, "keep the disk of a machine whose image is not immutable (it is deleted with the machine by default)")
	return cmd
}

// row is what list prints of a machine.
type row struct {
	Name     string       `json:"name"`
	State    vmfest.State `json:"state"`
	Image    string       `json:"image"`
	Hardware string       `json:"hardware"`
	Accel    string       `json:"accel,omitempty"`
	PID      int          `json:"pid,omitempty"`
	// Networks are the NICs with their known addresses.
	Networks []vmfest.NICInfo  `json:"networks,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Host is the pool host the machine is on (listed through --pool).
	Host  string `json:"host,omitempty"`
	Error string `json:"error,omitempty"`
}

func (a *app) listCommand() *cobra.Command {
	var labels []string
	cmd := &cobra.Command{
		Use:     "list [--label key=value]...",
		Aliases: []string{"ls"},
		Short:   "List machines",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			want := map[string]string{}
			for _, l := range labels {
				k, v, _, err := vmfest.ParseLabel(l, false)
				if err != nil {
					return usageError{fmt.Errorf("--label: %w", err)}
				}
				want[k] = v
			}
			srv, err := a.server()
			if err != nil {
				return err
			}
			ms, err := srv.Machines(cmd.Context())
			if err != nil {
				return err
			}
			rows := make([]row, len(ms))
			done := make(chan struct{}, len(ms))
			for i, m := range ms {
				go func() {
					defer func() { done <- struct{}{} }()
					host, _ := pool.HostOf(m)
					info, err := m.Info(cmd.Context())
					if err != nil {
						rows[i] = row{Name: m.Name(), State: "unknown", Host: host, Error: oneLine(err.Error())}
						return
					}
					rows[i] = row{Name: info.Name, State: info.State, Image: info.Image, Hardware: info.Hardware, Accel: info.Accel, PID: info.PID, Networks: info.Networks, Labels: info.Labels, Host: host}
				}()
			}
			for range ms {
				<-done
			}
			if len(want) > 0 {
				kept := rows[:0]
				for _, r := range rows {
					if r.Error == "" && vmfest.HasLabels(r.Labels, want) {
						kept = append(kept, r)
					}
				}
				rows = kept
			}
			if a.json {
				return a.printJSON(rows)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			owners := anyOwner(rows) // machines of a system instance (system.go)
			// Through a pool, a HOST column: the pool host of each machine.
			hostHeader, hostCell := "", func(row) string { return "" }
			if srv, ok := srv.(*pool.Pool); ok && srv != nil {
				hostHeader, hostCell = "HOST\t", func(r row) string { return dash(r.Host) + "\t" }
			}
			fmt.Fprintln(tw, "NAME\t"+hostHeader+"STATE\tIMAGE\tHARDWARE\tACCEL\tADDRESSES"+owners.header())
			for _, r := range rows {
				accel := r.Accel
				if accel == "" {
					accel = "-"
				}
				if r.Error != "" {
					fmt.Fprintf(tw, "%s\t%s%s\t%s\t\t\n", r.Name, hostCell(r), r.State, r.Error)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%s%s\n", r.Name, hostCell(r), r.State, r.Image, r.Hardware, accel, addresses(r.Networks), owners.cell(r.Labels))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringArrayVar(&labels, "label", nil, "only machines with this key=value label (repeatable: all of them)")
	return cmd
}

func (a *app) labelCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "label NAME key=value|key-...",
		Short: "Set (key=value) or remove (key-) a machine's labels",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			set := map[string]string{}
			var remove []string
			for _, l := range args[1:] {
				k, v, rm, err := vmfest.ParseLabel(l, true)
				if err != nil {
					return usageError{err}
				}
				if rm {
					remove = append(remove, k)
				} else {
					set[k] = v
				}
			}
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := m.Relabel(cmd.Context(), set, remove); err != nil {
				return err
			}
			info, done, err := a.infoOrJSON(cmd.Context(), m)
			if done || err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%s: %s\n", info.Name, labelText(info.Labels))
			return nil
		},
	}
}

// infoOrJSON reads m's Info as a command leaves it and, under --json,
// prints it as the command's output: done says nothing more is to print.
func (a *app) infoOrJSON(ctx context.Context, m vmfest.Machine) (info vmfest.Info, done bool, err error) {
	if info, err = m.Info(ctx); err != nil {
		return info, true, err
	}
	if a.json {
		return info, true, a.printJSON(info)
	}
	return info, false, nil
}

// labelText writes labels as key=value, sorted, or "no labels".
func labelText(labels map[string]string) string {
	if len(labels) == 0 {
		return "no labels"
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + labels[k]
	}
	return strings.Join(keys, " ")
}

func (a *app) showCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a machine",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			info, done, err := a.infoOrJSON(cmd.Context(), m)
			if done || err != nil {
				return err
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "name:\t%s\n", info.Name)
			fmt.Fprintf(tw, "state:\t%s\n", info.State)
			fmt.Fprintf(tw, "image:\t%s\n", info.Image)
			fmt.Fprintf(tw, "hardware:\t%s (%d MiB, %d CPU)\n", info.Hardware, info.HardwareSpec.MemorySize, info.HardwareSpec.CPUCount)
			if info.Accel != "" {
				fmt.Fprintf(tw, "accel:\t%s\n", info.Accel)
			}
			if info.PID != 0 {
				fmt.Fprintf(tw, "pid:\t%d\n", info.PID)
			}
			fmt.Fprintf(tw, "disk:\t%s\n", info.Disk)
			if info.BaseImage != "" {
				fmt.Fprintf(tw, "base image:\t%s (immutable)\n", info.BaseImage)
			}
			if info.HardwareSpec.DiskSize != 0 {
				fmt.Fprintf(tw, "disk size:\t%s\n", info.HardwareSpec.DiskSize)
			}
			if len(info.Labels) > 0 {
				fmt.Fprintf(tw, "labels:\t%s\n", labelText(info.Labels))
			}
			if info.UserData {
				fmt.Fprintf(tw, "user-data:\tyes (passed to cloud-init at each start)\n")
			}
			if info.ReidentifyPending != "" {
				fmt.Fprintf(tw, "re-identify:\tpending: its guest may still have %s's MACs, address and host name\n", info.ReidentifyPending)
			}
			if info.GenerationID != "" {
				fmt.Fprintf(tw, "generation id:\t%s\n", info.GenerationID)
			}
			for _, md := range info.Media {
				what := md.Path
				if md.Volume != "" {
					what = "volume " + md.Volume
				}
				fmt.Fprintf(tw, "%s:\t%s at %s\n", md.DeviceType, what, slotText(md.Slot))
			}
			for i, n := range info.HardwareSpec.Network {
				line := fmt.Sprintf("%s %s %s", n.AttachmentType, n.AdapterType, n.MACAddress)
				if i < len(info.Networks) {
					ni := info.Networks[i]
					if ni.Network != "" {
						line += " on " + ni.Network
					}
					if ni.IP != "" {
						line += " ip " + ni.IP
					}
					if ni.SSH != "" {
						line += " ssh " + ni.SSH
					}
					for _, r := range n.NATRules {
						line += fmt.Sprintf(" %s %s:%d->%d", r.Name, r.HostIP, r.HostPort, r.GuestPort)
					}
				}
				fmt.Fprintf(tw, "nic %d:\t%s\n", i, line)
			}
			fmt.Fprintf(tw, "console:\t%s\n", info.SerialLog)
			fmt.Fprintf(tw, "created:\t%s\n", info.Created.Local().Format(time.RFC3339))
			return tw.Flush()
		},
	}
}

func (a *app) consoleCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "console NAME [--follow]",
		Short: "Print a machine's serial console log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			data, err := m.ConsoleLog(ctx)
			if err != nil {
				return err
			}
			a.out.Write(data)
			if !follow {
				return nil
			}
			prev := data
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
				data, err := m.ConsoleLog(ctx)
				if err != nil {
					return err
				}
				a.out.Write(data[consoleOverlap(prev, data):])
				prev = data
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	return cmd
}

// consoleOverlap returns how much of the start of next was already shown
// as the end of prev. The kept console log grows at its end and, when it
// rotates, loses its start, so next begins with a suffix of prev (or, after
// a new run, with none of it); the longest such overlap is taken.
func consoleOverlap(prev, next []byte) int {
	if bytes.HasPrefix(next, prev) {
		return len(prev)
	}
	const anchor = 256
	if len(prev) < anchor {
		for k := min(len(prev), len(next)); k > 0; k-- {
			if bytes.Equal(next[:k], prev[len(prev)-k:]) {
				return k
			}
		}
		return 0
	}
	tail := prev[len(prev)-anchor:]
	best := 0
	for off := 0; ; {
		i := bytes.Index(next[off:], tail)
		if i < 0 {
			break
		}
		k := off + i + anchor
		if k <= len(prev) && bytes.Equal(next[:k], prev[len(prev)-k:]) {
			best = k
		}
		off += i + 1
	}
	return best
}
