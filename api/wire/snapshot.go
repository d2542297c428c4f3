package wire

// SnapshotRequest is the body of POST /v1/machines/{name}/snapshots.
type SnapshotRequest struct {
	Name string `json:"name"`
}
