package directory

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hushchat/hush/keyserver/ksapi"
	"github.com/hushchat/hush/protocol"
)

// HTTP asks a key server's internal endpoint
// (GET /v1/internal/accounts/{name}/devices) with the operator's shared
// secret. It is what hush-relay uses when the key server runs elsewhere;
// wrap it in a Cache.
type HTTP struct {
	base   *url.URL
	secret string
	client *http.Client
}

// NewHTTP returns a client of the key server at baseURL ("http://host:port").
// client nil means a client with a 5 s timeout.
func NewHTTP(baseURL, secret string, client *http.Client) (*HTTP, error) {
	u, err := parseBase(baseURL)
	if err != nil {
		return nil, err
	}
	if secret == "" {
		return nil, errors.New("directory: the key server's internal secret is empty")
	}
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	return &HTTP{base: u, secret: secret, client: client}, nil
}

func parseBase(baseURL string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("directory: key server URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("directory: key server URL %q must be http(s)://host[:port]", baseURL)
	}
	return u, nil
}

// Devices implements Directory.
func (h *HTTP) Devices(ctx context.Context, account string) ([]uint32, error) {
	if err := protocol.ValidateAccountName(account); err != nil {
		// A name that cannot exist is unknown; do not put it in a URL.
		return nil, &UnknownAccountError{Account: account}
	}
	path := strings.Replace(ksapi.PathInternalDevices, "{name}", url.PathEscape(account), 1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base.JoinPath(path).String(), nil)
	if err != nil {
		return nil, fmt.Errorf("devices of %s: %w", account, err)
	}
	req.Header.Set(ksapi.InternalSecretHeader, h.secret)
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("devices of %s: %w", account, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, ksapi.MaxResponseSize+1))
	if err != nil {
		return nil, fmt.Errorf("devices of %s: read answer: %w", account, err)
	}
	if len(body) > ksapi.MaxResponseSize {
		return nil, fmt.Errorf("devices of %s: answer larger than %d bytes", account, ksapi.MaxResponseSize)
	}
	if resp.StatusCode != http.StatusOK {
		var e protocol.KeyServerError
		_ = ksapi.Unmarshal(body, &e)
		if resp.StatusCode == http.StatusNotFound && e.Code == ksapi.CodeAccountNotFound {
			return nil, &UnknownAccountError{Account: account}
		}
		return nil, fmt.Errorf("devices of %s: key server answered %s (%s)", account, resp.Status, e.Code)
	}
	return parseDeviceList(account, body)
}

// parseDeviceList decodes the key server's answer (bounded by the caller to
// ksapi.MaxResponseSize) and checks every device id.
func parseDeviceList(account string, body []byte) ([]uint32, error) {
	var list protocol.DeviceList
	if err := ksapi.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("devices of %s: decode answer: %w", account, err)
	}
	if len(list.Devices) == 0 {
		return nil, &UnknownAccountError{Account: account}
	}
	if len(list.Devices) > protocol.MaxDeviceID {
		return nil, fmt.Errorf("devices of %s: key server sent %d devices, more than ids exist", account, len(list.Devices))
	}
	ids := make([]uint32, 0, len(list.Devices))
	for _, d := range list.Devices {
		if err := protocol.ValidateDeviceID(d.DeviceId); err != nil {
			return nil, fmt.Errorf("devices of %s: key server sent %w", account, err)
		}
		ids = append(ids, d.DeviceId)
	}
	return ids, nil
}

// FetchServerKey asks the key server at baseURL for the Ed25519 public key
// its tokens are signed with (GET /v1/server-key). hush-relay calls it once
// at start unless the key is given on the command line. Fetch it only over
// a channel you trust (loopback, a private network, or https): whoever
// answers this request decides which tokens the relay accepts.
func FetchServerKey(ctx context.Context, baseURL string, client *http.Client) (ed25519.PublicKey, error) {
	u, err := parseBase(baseURL)
	if err != nil {
		return nil, err
	}
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.JoinPath(ksapi.PathServerKey).String(), nil)
	if err != nil {
		return nil, fmt.Errorf("fetch key server key: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch key server key: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, ksapi.MaxResponseSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetch key server key: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch key server key: key server answered %s", resp.Status)
	}
	var k protocol.KeyServerKey
	if err := ksapi.Unmarshal(body, &k); err != nil {
		return nil, fmt.Errorf("fetch key server key: decode: %w", err)
	}
	if k.Algorithm != "ed25519" || len(k.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("fetch key server key: want a %d-byte ed25519 key, got %q with %d bytes", ed25519.PublicKeySize, k.Algorithm, len(k.PublicKey))
	}
	return ed25519.PublicKey(k.PublicKey), nil
}
