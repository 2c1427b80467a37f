package keyserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

// apiError is an error with its HTTP answer. Handlers return one for every
// client mistake; anything else is a server-side failure (503 or 500).
type apiError struct {
	status     int
	code       string
	msg        string
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(code, format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, code, format, args...)
}

// handlerFunc is a route's logic: it either writes a complete answer with
// reply/replyStatus or returns an error, never both.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// methods maps HTTP methods to the handler of one path.
type methods map[string]handlerFunc

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, ms methods) {
		allow := make([]string, 0, len(ms))
		for m := range ms {
			allow = append(allow, m)
		}
		allowHdr := strings.Join(allow, ", ")
		mux.Handle(pattern, s.instrument(pattern, func(w http.ResponseWriter, r *http.Request) error {
			h, ok := ms[r.Method]
			if !ok {
				w.Header().Set("Allow", allowHdr)
				return errf(http.StatusMethodNotAllowed, ksapi.CodeMethodNotAllowed, "%s is not allowed here (allowed: %s)", r.Method, allowHdr)
			}
			return h(w, r)
		}))
	}
	handle(ksapi.PathServerKey, methods{http.MethodGet: s.serverKey})
	handle(ksapi.PathChallenge, methods{http.MethodPost: s.challenge})
	handle(ksapi.PathToken, methods{http.MethodPost: s.login})
	handle(ksapi.PathAccounts, methods{http.MethodPost: s.register})
	handle(ksapi.PathDevices, methods{http.MethodGet: s.authed(s.listDevices), http.MethodPost: s.authed(s.addDevice)})
	handle(ksapi.PathDevice, methods{http.MethodDelete: s.authed(s.removeDevice)})
	handle(ksapi.PathOneTimePreKeys, methods{http.MethodPost: s.authed(s.uploadPreKeys)})
	handle(ksapi.PathSignedPreKey, methods{http.MethodPut: s.authed(s.rotateSignedPreKey)})
	handle(ksapi.PathLastResort, methods{http.MethodPut: s.authed(s.setLastResort)})
	handle(ksapi.PathKeyStatus, methods{http.MethodGet: s.authed(s.keyStatus)})
	handle(ksapi.PathBundles, methods{http.MethodGet: s.authed(s.bundles)})
	handle(ksapi.PathIdentity, methods{http.MethodGet: s.authed(s.identity)})
	handle(ksapi.PathInternalDevices, methods{http.MethodGet: s.internalDevices})
	mux.Handle("/", s.instrument("other", func(w http.ResponseWriter, r *http.Request) error {
		return errf(http.StatusNotFound, ksapi.CodeNotFound, "no route %s", r.URL.Path)
	}))
	return mux
}

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// instrument turns a handlerFunc into an http.Handler: it answers returned
// errors as JSON, recovers panics as 500, and records metrics under the
// route pattern (bounded cardinality, no names or ids).
func (s *Server) instrument(route string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("keyserver: panic in handler", "route", route, "panic", fmt.Sprint(p))
				if sw.status == 0 {
					s.writeError(sw, errf(http.StatusInternalServerError, ksapi.CodeInternal, "internal error"))
				}
			}
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
			s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		if err := h(sw, r); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = s.serverError(r, route, err)
			}
			s.writeError(sw, ae)
		}
	})
}

// serverError answers a failure that is not the client's fault. The store
// failing is 503 (retry later); the request being cancelled is not logged.
func (s *Server) serverError(r *http.Request, route string, err error) *apiError {
	if r.Context().Err() != nil {
		return errf(http.StatusServiceUnavailable, ksapi.CodeUnavailable, "request cancelled")
	}
	s.log.Error("keyserver: request failed", "route", route, "err", err)
	return errf(http.StatusServiceUnavailable, ksapi.CodeUnavailable, "the key server cannot serve this request now; retry later")
}

func (s *Server) writeError(w http.ResponseWriter, e *apiError) {
	body := &protocol.KeyServerError{Code: e.code, Message: e.msg}
	if e.retryAfter > 0 {
		secs := uint32(math.Ceil(e.retryAfter.Seconds()))
		body.RetryAfterSeconds = secs
		w.Header().Set("Retry-After", strconv.FormatUint(uint64(secs), 10))
	}
	s.replyStatus(w, e.status, body)
}

// reply writes m as a 200 answer.
func (s *Server) reply(w http.ResponseWriter, m proto.Message) error {
	s.replyStatus(w, http.StatusOK, m)
	return nil
}

// replyStatus encodes m completely before writing anything, so an answer is
// either whole or absent.
func (s *Server) replyStatus(w http.ResponseWriter, status int, m proto.Message) {
	b, err := ksapi.Marshal(m)
	if err != nil {
		s.log.Error("keyserver: encode response", "err", err)
		status = http.StatusInternalServerError
		b = []byte(`{"code":"internal","message":"internal error","retry_after_seconds":0}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// decode reads a JSON body of at most limit bytes into m.
func decode(w http.ResponseWriter, r *http.Request, limit int64, m proto.Message) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errf(http.StatusUnsupportedMediaType, ksapi.CodeUnsupportedMediaType,
				"Content-Type must be application/json")
		}
	}
	if r.ContentLength > limit {
		return errf(http.StatusRequestEntityTooLarge, ksapi.CodeBodyTooLarge, "body of %d bytes exceeds %d", r.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, ksapi.CodeBodyTooLarge, "body exceeds %d bytes", limit)
		}
		return badRequest(ksapi.CodeMalformedJSON, "reading body: %v", err)
	}
	return decodeBody(body, m)
}

// decodeBody is the bounded decoder every request body goes through (and
// the fuzz targets exercise): syntax first, so a syntax error and a schema
// error get different codes.
func decodeBody(body []byte, m proto.Message) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest(ksapi.CodeMalformedJSON, "empty body; expected a JSON object")
	}
	if !json.Valid(body) {
		return badRequest(ksapi.CodeMalformedJSON, "body is not valid JSON")
	}
	if err := ksapi.Unmarshal(body, m); err != nil {
		msg := strings.TrimPrefix(err.Error(), "proto: ")
		if strings.Contains(msg, "unknown field") {
			return badRequest(ksapi.CodeUnknownField, "%s", msg)
		}
		return badRequest(ksapi.CodeInvalidField, "%s", msg)
	}
	return nil
}

// discardBody drains the (ignored) body of a route that takes none, bounded
// like every other body.
func discardBody(w http.ResponseWriter, r *http.Request) error {
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, ksapi.SmallBodySize)); err != nil {
		return errf(http.StatusRequestEntityTooLarge, ksapi.CodeBodyTooLarge, "this route takes no body")
	}
	return nil
}
