package disk

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hushchat/hush/server/media/mediaapi"
)

// Signed URLs. The relay serves blobs itself on
//
//	/v1/media/blob/{key}?op=put&size={n}&exp={unix}&sig={mac}
//	/v1/media/blob/{key}?op=get&exp={unix}&sig={mac}
//
// where mac is base64url(HMAC-SHA256(store key, "hush-media-url-v1\x00" ‖
// op ‖ 0 ‖ key ‖ 0 ‖ size ‖ 0 ‖ exp)) with size and exp in decimal (size
// "-" for get). The MAC covers the operation, so a download URL cannot
// upload; the key, so a URL cannot be pointed at another object; the size,
// so an upload cannot grow; and the expiry. The query has exactly one
// canonical form and the parser accepts nothing else, so there is one
// string per signature and no parser ambiguity to exploit.

const (
	opPut = "put"
	opGet = "get"

	urlDomain = "hush-media-url-v1\x00"
	macSize   = sha256.Size
	// maxQuery bounds the query string the parser looks at.
	maxQuery = 160
)

var b64 = base64.RawURLEncoding.Strict()

// Errors of parseSignedURL and verify.
var (
	errMalformedURL = errors.New("malformed signed URL")
	errBadSignature = errors.New("URL signature does not verify")
	errURLExpired   = errors.New("URL expired")
)

// signedURL is a parsed blob URL.
type signedURL struct {
	op   string
	key  string
	size int64 // -1 for get
	exp  int64 // Unix seconds
	sig  []byte
}

// message is the byte string the MAC covers.
func (u signedURL) message() []byte {
	size := "-"
	if u.op == opPut {
		size = strconv.FormatInt(u.size, 10)
	}
	m := make([]byte, 0, len(urlDomain)+len(u.op)+len(u.key)+len(size)+24)
	m = append(m, urlDomain...)
	m = append(m, u.op...)
	m = append(m, 0)
	m = append(m, u.key...)
	m = append(m, 0)
	m = append(m, size...)
	m = append(m, 0)
	m = strconv.AppendInt(m, u.exp, 10)
	return m
}

func mac(key []byte, u signedURL) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(u.message())
	return h.Sum(nil)
}

// path returns the URL path and query of u (with u.sig).
func (u signedURL) path() string {
	var b strings.Builder
	b.WriteString(mediaapi.BlobPrefix)
	b.WriteString(u.key)
	b.WriteString("?op=")
	b.WriteString(u.op)
	if u.op == opPut {
		b.WriteString("&size=")
		b.WriteString(strconv.FormatInt(u.size, 10))
	}
	b.WriteString("&exp=")
	b.WriteString(strconv.FormatInt(u.exp, 10))
	b.WriteString("&sig=")
	b.WriteString(b64.EncodeToString(u.sig))
	return b.String()
}

// sign returns the path and query of a URL for op on key.
func sign(hmacKey []byte, op, key string, size int64, exp time.Time) string {
	u := signedURL{op: op, key: key, size: size, exp: exp.Unix()}
	if op != opPut {
		u.size = -1
	}
	u.sig = mac(hmacKey, u)
	return u.path()
}

// parseSignedURL parses the path and raw query of a blob request. It
// checks the form only; verify checks the MAC and the expiry.
func parseSignedURL(path, rawQuery string) (signedURL, error) {
	key, ok := strings.CutPrefix(path, mediaapi.BlobPrefix)
	if !ok || !mediaapi.ValidObjectKey(key) {
		return signedURL{}, fmt.Errorf("%w: path is not %s{key}", errMalformedURL, mediaapi.BlobPrefix)
	}
	if len(rawQuery) > maxQuery {
		return signedURL{}, fmt.Errorf("%w: query longer than %d bytes", errMalformedURL, maxQuery)
	}
	u := signedURL{key: key, size: -1}
	rest := rawQuery
	next := func(name string) (string, error) {
		var part string
		part, rest, _ = strings.Cut(rest, "&")
		v, ok := strings.CutPrefix(part, name+"=")
		if !ok {
			return "", fmt.Errorf("%w: expected %q parameter", errMalformedURL, name)
		}
		return v, nil
	}
	op, err := next("op")
	if err != nil {
		return signedURL{}, err
	}
	switch op {
	case opPut:
		v, err := next("size")
		if err != nil {
			return signedURL{}, err
		}
		if u.size, err = parseDecimal(v); err != nil {
			return signedURL{}, fmt.Errorf("%w: size %v", errMalformedURL, err)
		}
	case opGet:
	default:
		return signedURL{}, fmt.Errorf("%w: unknown op", errMalformedURL)
	}
	u.op = op
	v, err := next("exp")
	if err != nil {
		return signedURL{}, err
	}
	if u.exp, err = parseDecimal(v); err != nil {
		return signedURL{}, fmt.Errorf("%w: exp %v", errMalformedURL, err)
	}
	v, err = next("sig")
	if err != nil {
		return signedURL{}, err
	}
	if rest != "" {
		return signedURL{}, fmt.Errorf("%w: unexpected parameters after sig", errMalformedURL)
	}
	if len(v) != b64.EncodedLen(macSize) {
		return signedURL{}, fmt.Errorf("%w: sig is %d characters, want %d", errMalformedURL, len(v), b64.EncodedLen(macSize))
	}
	if u.sig, err = b64.DecodeString(v); err != nil {
		return signedURL{}, fmt.Errorf("%w: sig encoding", errMalformedURL)
	}
	return u, nil
}

// verify checks u's MAC under hmacKey and that it has not expired at now
// (a URL is expired from its exp second on).
func (u signedURL) verify(hmacKey []byte, now time.Time) error {
	if !hmac.Equal(mac(hmacKey, u), u.sig) {
		return errBadSignature
	}
	if now.Unix() >= u.exp {
		return fmt.Errorf("%w at %s", errURLExpired, time.Unix(u.exp, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// parseDecimal accepts a canonical non-negative decimal int64 (no sign, no
// leading zeros).
func parseDecimal(s string) (int64, error) {
	if s == "" || len(s) > 18 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a canonical decimal", s)
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a canonical decimal", s)
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}
