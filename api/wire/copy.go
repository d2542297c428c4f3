package wire

// Copies move a tar stream (application/x-tar) in the request or the
// answer of /v1/machines/{name}/files, the guest path and the transport in
// the query (?path=, ?via=, ?timeout=).
const (
	// TarType is the content type of a copy's stream.
	TarType = "application/x-tar"
	// MaxCopy is the largest tar stream the server takes in one copy into
	// a machine (16 GiB); a larger one is cut off with 413.
	MaxCopy = 16 << 30
	// CopyErrorTrailer is the HTTP trailer that carries an Error, as
	// JSON, when a copy out of a machine fails after its stream began.
	CopyErrorTrailer = "Vmfest-Copy-Error"
)
