package wire

// CloneRequest is the body of POST /v1/machines/{name}/clone.
type CloneRequest struct {
	Name string `json:"name"`
}

// CloneResult answers it (201): the clone, and when the clone was made
// but did not start or keeps its source's identity, why.
type CloneResult struct {
	Name string `json:"name"`
	// State is the clone's state.
	State string `json:"state"`
	// Error, when set, says what did not work after the clone was made.
	Error string `json:"error,omitempty"`
	// NotReidentified: the clone runs with its source's identity.
	NotReidentified bool `json:"not-reidentified,omitempty"`
}
