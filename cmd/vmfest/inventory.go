package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

// inventoryCommand prints an Ansible dynamic inventory of the running
// machines (the script protocol: --list, --host NAME).
func (a *app) inventoryCommand() *cobra.Command {
	var list bool
	var host string
	cmd := &cobra.Command{
		Use:   "inventory --list | --host NAME",
		Short: "Print an Ansible dynamic inventory of the running machines",
		Long: `Print an Ansible dynamic inventory (JSON) of the running machines:
--list gives every group and host, --host NAME one host's variables.
Each host has ansible_host and ansible_port (its SSH endpoint, as vmfest ssh
uses it; with --server or --pool, a ProxyCommand of vmfest ssh-proxy through
the server's API, or the API of the pool host that owns the machine,
instead), ansible_user (the image's user) and
ansible_ssh_private_key_file (vmfest's key in --home); groups are "vmfest" (all of them) and one per label,
named key_value. Use it as ansible's inventory through a two-line script:

  printf '#!/bin/sh\nexec vmfest inventory "$@"\n' > vmfest-inventory; chmod +x vmfest-inventory
  ansible -i ./vmfest-inventory all -m raw -a hostname`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if list == (host != "") {
				return usageError{errors.New("give --list or --host NAME (as ansible calls an inventory script)")}
			}
			srv, err := a.server()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ms, err := srv.Machines(ctx)
			if err != nil {
				return err
			}
			// vmfest's key in --home: the server's own when local, the
			// one create --server gave the machine when remote.
			key := filepath.Join(a.home, "ssh", "id_ed25519")
			proxy, err := a.inventoryProxy()
			if err != nil {
				return err
			}
			groups := map[string][]string{}
			hostvars := map[string]map[string]any{}
			for _, m := range ms {
				info, err := m.Info(ctx)
				if err != nil || info.State != vmfest.Running {
					continue
				}
				var addr string
				if proxy == "" {
					if addr, err = vmfest.SSHEndpoint(ctx, m); err != nil {
						fmt.Fprintf(a.errOut, "warning: %s left out: %v\n", m.Name(), err)
						continue
					}
				}
				vars, err := hostVars(info, addr, key, proxy)
				if err != nil {
					fmt.Fprintf(a.errOut, "warning: %s left out: %v\n", m.Name(), err)
					continue
				}
				hostvars[info.Name] = vars
				groups["vmfest"] = append(groups["vmfest"], info.Name)
				for k, v := range info.Labels {
					g := groupName(k + "_" + v)
					groups[g] = append(groups[g], info.Name)
				}
			}
			if host != "" {
				vars, ok := hostvars[host]
				if !ok {
					vars = map[string]any{}
				}
				return a.printJSON(vars)
			}
			out := map[string]any{"_meta": map[string]any{"hostvars": hostvars}}
			for g, hosts := range groups {
				sort.Strings(hosts)
				out[g] = map[string]any{"hosts": hosts}
			}
			if _, ok := out["vmfest"]; !ok {
				out["vmfest"] = map[string]any{"hosts": []string{}}
			}
			return a.printJSON(out)
		},
	}
	cmd.Flags().BoolVar(&list, "list", false, "every group and host, with the hosts' variables under _meta")
	cmd.Flags().StringVar(&host, "host", "", "one host's variables")
	return cmd
}

// inventoryProxy is the ProxyCommand (without the machine's name) that
// reaches a machine through --server's API, or through the API of its
// pool host with --pool (vmfest ssh-proxy finds the owner in etcd at each
// connection); "" for machines on this host. Tokens are not written into
// it: ssh-proxy reads them as this command did, from the environment
// (VMFEST_TOKEN, VMFEST_POOL_TOKENS) and --home's token file.
func (a *app) inventoryProxy() (string, error) {
	if a.remote == "" && a.pool.endpoints == "" {
		return "", nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := []string{shellQuote(exe)}
	if a.pool.endpoints != "" {
		cmd = append(cmd, "--pool", shellQuote(a.pool.endpoints))
		for _, f := range []struct{ flag, value string }{
			{"--pool-cacert", a.pool.caCert}, {"--pool-cert", a.pool.cert}, {"--pool-key", a.pool.key}, {"--pool-user", a.pool.user}, {"--pool-host-cacert", a.pool.hostCACert},
		} {
			if f.value != "" {
				cmd = append(cmd, f.flag, shellQuote(f.value))
			}
		}
	} else {
		cmd = append(cmd, "--server", shellQuote(a.remote))
	}
	return strings.Join(append(cmd, "--home", shellQuote(a.home), "ssh-proxy"), " "), nil
}

// hostVars is a machine's Ansible connection variables: its SSH endpoint
// addr, or with proxy (a vmfest ssh-proxy command line, for --server) a
// ProxyCommand through the server's API.
func hostVars(info vmfest.Info, addr, key, proxy string) (map[string]any, error) {
	user := info.ImageSpec.Username
	if user == "" {
		user = "root"
	}
	// The guest's host key is new with every machine (and every clone):
	// do not record it in the user's known_hosts.
	common := "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
	vars := map[string]any{"ansible_user": user}
	if proxy != "" {
		vars["ansible_host"] = info.Name
		common += ` -o ProxyCommand="` + proxy + " " + shellQuote(info.Name) + `"`
	} else {
		h, p, err := splitHostPort(addr)
		if err != nil {
			return nil, err
		}
		vars["ansible_host"], vars["ansible_port"] = h, p
	}
	vars["ansible_ssh_common_args"] = common
	if key != "" {
		vars["ansible_ssh_private_key_file"] = key
	}
	return vars, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(ps)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	return h, p, nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// groupName makes an Ansible group name of a label: letters, digits and
// underscores.
func groupName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}
