package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// modelCommands are `vmfest model ...` and its top-level aliases
// `setup-model` (model add) and `models` (model list).
func (a *app) modelCommands() []*cobra.Command {
	cmd := &cobra.Command{
		Use:     "model",
		Args:    cobra.ArbitraryArgs,
		RunE:    unknownSubcommand,
		Aliases: []string{"image"},
		Short:   "Image models: installed, immutable base images",
	}
	cmd.AddCommand(a.modelAddCommand("add"), a.modelListCommand("list"), a.modelShowCommand(), a.modelRemoveCommand())
	setup := a.modelAddCommand("setup-model")
	setup.Short += " (same as 'model add')"
	models := a.modelListCommand("models")
	models.Short += " (same as 'model list')"
	return []*cobra.Command{cmd, setup, models}
}

func (a *app) modelAddCommand(use string) *cobra.Command {
	var opts vmfest.SetupOptions
	var metaFile string
	var over spec.Image
	cmd := &cobra.Command{
		Use:   use + " SOURCE",
		Short: "Install an image model from a URL or a file",
		Long: `Install an image model from SOURCE: an http:// or https:// URL, a file://
URL or a path.

The file may be compressed (gzip, xz, zstd or bzip2: told by its content) and
may be a qcow2, raw, VirtualBox VDI, VMDK, VHD or VHDX disk, a Vagrant .box
or an .ova; it is converted to a read-only qcow2 and installed atomically.

The id is the file name without its compression and format suffixes
(debian-12.vdi.gz installs as debian-12) unless --id is given.

Metadata comes from --meta FILE, else from STEM.meta beside the source (JSON,
YAML, or VMFest's EDN .meta files, read as data), else from what a .box or
.ova says. The --os-family, --username, ... flags override single fields.

The sha256 of what is downloaded is checked against --sha256, else against
NAME.sha256, STEM.sha256 or SHA256SUMS beside the source when one lists it.
An interrupted download resumes when the command is run again.`,
		Example: `  vmfest model add https://example.org/images/debian-12.qcow2.xz
  vmfest model add ./build/vmfest-tiny.qcow2.gz --id tiny
  vmfest setup-model https://example.org/debian-6.0.2.1-64bit-v0.3.vdi.gz`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if metaFile != "" {
				data, err := os.ReadFile(metaFile)
				if err != nil {
					return fmt.Errorf("--meta: %w", err)
				}
				m, err := image.ParseMeta(data)
				if err != nil {
					return fmt.Errorf("--meta %s: %w", metaFile, err)
				}
				opts.Meta = &m
			}
			if cmd.Flags().Changed("os-family") || cmd.Flags().Changed("os-version") || over.OS64Bit ||
				cmd.Flags().Changed("username") || cmd.Flags().Changed("password") ||
				cmd.Flags().Changed("description") || over.CloudInit {
				opts.Overrides = &over
			}
			srv, err := a.server()
			if err != nil {
				return err
			}
			bar := a.progress()
			fetched := isURL(args[0])
			opts.Progress = func(p vmfest.Progress) {
				if !fetched && p.Phase == image.PhaseDownload {
					p.Phase = "read" // a file is read, not downloaded
				}
				bar.report(p)
			}
			begun := time.Now()
			m, err := srv.SetupModel(cmd.Context(), args[0], opts)
			if err != nil {
				bar.abandon() // as far as it got: no jump to 100 %
				return err
			}
			bar.finish()
			if a.json {
				return a.printJSON(m)
			}
			check := "not verified: no sha256 given or published"
			if m.Verified {
				check = "sha256 verified"
			}
			fmt.Fprintf(a.out, "installed image model %s (%s, %s%s; %s) in %s\n", m.ID, sizeText(m.VirtualSize), m.SourceFormat,
				via(m), check, time.Since(begun).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ID, "id", "", "model id (default: from the file name)")
	f.StringVar(&opts.SHA256, "sha256", "", "expected sha256 of the file downloaded")
	f.StringVar(&metaFile, "meta", "", "image metadata file (JSON, YAML or VMFest EDN)")
	f.BoolVar(&opts.Replace, "replace", false, "replace an installed model of the same id (refused while machines use it)")
	f.StringVar(&over.OSFamily, "os-family", "", "metadata: OS family (debian, ubuntu, ...)")
	f.StringVar(&over.OSVersion, "os-version", "", "metadata: OS version")
	f.BoolVar(&over.OS64Bit, "os-64-bit", false, "metadata: the OS is 64-bit")
	f.StringVar(&over.Username, "username", "", "metadata: login user")
	f.StringVar(&over.Password, "password", "", "metadata: login password")
	f.StringVar(&over.Description, "description", "", "metadata: description")
	f.BoolVar(&over.CloudInit, "cloud-init", false, "metadata: the image reads a NoCloud seed")
	return cmd
}

func via(m model.ImageModel) string {
	var parts []string
	if m.Compression != "" && m.Compression != image.CompressionNone {
		parts = append(parts, m.Compression)
	}
	if m.Container != "" {
		parts = append(parts, m.Container)
	}
	if len(parts) == 0 {
		return ""
	}
	return " from " + strings.Join(parts, " ")
}

// isURL reports a source fetched over the network (http, https), as
// opposed to a file (a path or a file:// URL).
func isURL(source string) bool {
	l := strings.ToLower(source)
	return strings.HasPrefix(l, "http://") || strings.HasPrefix(l, "https://")
}

// modelListCommand is "model list" (alias "model ls") or the top-level
// "models", which has no alias: a top-level "ls" is list's (machines).
func (a *app) modelListCommand(use string) *cobra.Command {
	var aliases []string
	if use == "list" {
		aliases = []string{"ls"}
	}
	return &cobra.Command{
		Use:     use,
		Aliases: aliases,
		Short:   "List installed image models",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			models, err := srv.Models(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(models)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tOS\tSIZE\tFROM\tINSTALLED")
			for _, m := range models {
				os := strings.TrimSpace(m.Spec.OSFamily + " " + m.Spec.OSVersion)
				if os == "" {
					os = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.ID, os, sizeText(m.VirtualSize), m.SourceFormat+via(m), m.Installed.Local().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
}

func (a *app) modelShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show an image model as YAML (or JSON with --json)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			m, err := srv.Model(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(m)
			}
			out, err := yaml.Marshal(m)
			if err != nil {
				return err
			}
			_, err = a.out.Write(out)
			return err
		},
	}
}

func (a *app) modelRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:        "rm ID...",
		Aliases:    []string{"remove"},
		SuggestFor: []string{"delete", "del"},
		Short:      "Remove image models (refused while machines use them)",
		Args:       cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			// --json prints each model as show --json did just before
			// it went.
			return eachNamed(a, args, "image models", func(id string) (model.ImageModel, error) {
				m, err := srv.Model(cmd.Context(), id)
				if err != nil {
					return m, err
				}
				if err := srv.RemoveModel(cmd.Context(), id); err != nil {
					return m, err
				}
				if !a.json {
					fmt.Fprintf(a.out, "removed image model %s\n", id)
				}
				return m, nil
			})
		},
	}
}

// sizeText prints a byte count in MiB, the one unit of the CLI's sizes
// (--memory, hardware list and show are in MiB too): whole when it is,
// else to a tenth.
func sizeText(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// progressDisplay shows setup progress: a bar per phase (bytes, rate and
// ETA) on a terminal, one line per phase elsewhere, nothing with --json.
type progressDisplay struct {
	w     io.Writer
	tty   bool
	quiet bool
	phase string
	bar   *progressbar.ProgressBar
}

func (a *app) progress() *progressDisplay {
	d := &progressDisplay{w: a.errOut, quiet: a.json}
	if f, ok := a.termErr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		d.tty = true
	}
	return d
}

func (d *progressDisplay) report(p vmfest.Progress) {
	if d.quiet {
		return
	}
	if p.Phase != d.phase {
		d.finish()
		d.phase = p.Phase
		if !d.tty || (p.Total <= 0 && p.Done == 0) { // no bytes to count: one line
			fmt.Fprintf(d.w, "%s...\n", p.Phase)
			return
		}
		total := p.Total
		if total <= 0 {
			total = -1
		}
		d.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(d.w),
			progressbar.OptionSetDescription(fmt.Sprintf("%-8s", p.Phase)),
			progressbar.OptionShowBytes(true),
			progressbar.OptionUseIECUnits(true), // KiB, MiB: as the rest of the CLI
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(d.w) }),
		)
	}
	if d.bar == nil {
		return
	}
	if p.Total > 0 && d.bar.GetMax64() != p.Total {
		d.bar.ChangeMax64(p.Total)
	}
	d.bar.Set64(p.Done)
}

// abandon ends the bar where it is, for a failed or interrupted setup.
func (d *progressDisplay) abandon() {
	if d.bar != nil {
		d.bar.Exit()
		d.bar = nil
	}
}

func (d *progressDisplay) finish() {
	if d.bar != nil {
		d.bar.Finish()
		d.bar = nil
	}
}
