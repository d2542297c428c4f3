package qemu

import (
	"context"
	"fmt"
	"strconv"

	"github.com/vmfest/vmfest/driver"
)

var _ driver.Links = (*Driver)(nil)

// SetLink implements driver.Links: QMP set_link on the NIC's netdev (net
// SLOT), which QEMU passes on to the guest's adapter.
func (d *Driver) SetLink(ctx context.Context, m driver.Machine, slot int, up bool) error {
	if _, err := RunQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket), "set_link", map[string]any{"name": "net" + strconv.Itoa(slot), "up": up}); err != nil {
		return fmt.Errorf("set the link of network[%d] %s: %w", slot, map[bool]string{true: "up", false: "down"}[up], err)
	}
	return nil
}
