package main

import "context"

// api measures the HTTP API; filled in when `vmfest serve` lands.
func (b *bench) api(ctx context.Context) error { return nil }
