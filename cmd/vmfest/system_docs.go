package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// packageDocsCommand writes what a package installs beside the binary:
// man pages generated from the commands (section 1) and the shell
// completions (bash, zsh, fish). Hidden: scripts/build-deb.sh runs it.
func packageDocsCommand(root *cobra.Command) *cobra.Command {
	var man, completions string
	cmd := &cobra.Command{
		Use:    "package-docs --man DIR --completions DIR",
		Short:  "Write man pages and shell completions (for packagers)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if man == "" && completions == "" {
				return fmt.Errorf("give --man DIR, --completions DIR or both")
			}
			if man != "" {
				if err := os.MkdirAll(man, 0o755); err != nil {
					return err
				}
				root.DisableAutoGenTag = true // reproducible pages: no date in them
				hdr := &doc.GenManHeader{Title: "VMFEST", Section: "1", Source: "vmfest " + version, Manual: "vmfest manual"}
				if epoch, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
					d := time.Unix(epoch, 0).UTC()
					hdr.Date = &d
				}
				if err := doc.GenManTree(root, hdr, man); err != nil {
					return fmt.Errorf("man pages: %w", err)
				}
			}
			if completions != "" {
				for _, c := range []struct {
					file string
					gen  func(string) error
				}{
					{"vmfest.bash", func(p string) error { return root.GenBashCompletionFileV2(p, true) }},
					{"_vmfest", root.GenZshCompletionFile},
					{"vmfest.fish", func(p string) error { return root.GenFishCompletionFile(p, true) }},
				} {
					if err := os.MkdirAll(completions, 0o755); err != nil {
						return err
					}
					if err := c.gen(filepath.Join(completions, c.file)); err != nil {
						return fmt.Errorf("completion %s: %w", c.file, err)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&man, "man", "", "directory for the man pages (vmfest.1, vmfest-create.1, ...)")
	cmd.Flags().StringVar(&completions, "completions", "", "directory for vmfest.bash, _vmfest (zsh) and vmfest.fish")
	return cmd
}
