package api

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3 description of the API, kept in the
// repository as api/openapi.json.
//
//go:embed openapi.json
var openAPIDoc []byte

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDoc)
	return err
}
