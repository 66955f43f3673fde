package api

import (
	"net/http"
	"strconv"
)

// leaveCluster takes this node out of the cluster: leadership handed over,
// membership removed; the process then stops.
func (s *Server) leaveCluster(w http.ResponseWriter, r *http.Request) error {
	if s.o.Leave == nil {
		return &apiError{http.StatusNotImplemented, "unsupported", "this node cannot leave"}
	}
	if err := s.o.Leave(r.Context()); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"left": s.store.Address()})
	return nil
}

// removeMember removes a dead member from the cluster.
func (s *Server) removeMember(w http.ResponseWriter, r *http.Request) error {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		return badRequest("member id %q is not a number (see `control cluster status`)", r.PathValue("id"))
	}
	if err := s.store.RemoveMember(r.Context(), id); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"removed": id})
	return nil
}
