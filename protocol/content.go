package protocol

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

// Content is padded before encryption so that ciphertext sizes reveal only a
// coarse bucket of the message length, as Signal does: the encoded Content,
// then 0x80, then zeros up to the next multiple of PaddingBlock.
const PaddingBlock = 160

// Limits on fields inside Content, checked after decryption.
const (
	MaxTextLen      = 64 << 10
	MaxThumbnailLen = 64 << 10
	MaxFileNameLen  = 255
	MaxReceiptIDs   = 1024
	MaxGroupNameLen = 128
)

// ErrBadPadding is returned when decrypted content is not padded as Pad does.
var ErrBadPadding = errors.New("content padding is malformed")

// Pad appends Signal-style padding to b.
func Pad(b []byte) []byte {
	n := (len(b)/PaddingBlock + 1) * PaddingBlock
	out := make([]byte, n)
	copy(out, b)
	out[len(b)] = 0x80
	return out
}

// Unpad strips the padding added by Pad.
func Unpad(b []byte) ([]byte, error) {
	for i := len(b) - 1; i >= 0; i-- {
		switch b[i] {
		case 0:
			continue
		case 0x80:
			return b[:i], nil
		default:
			return nil, ErrBadPadding
		}
	}
	return nil, ErrBadPadding
}

// EncodeContent validates, encodes and pads c, ready for encryption.
func EncodeContent(c *Content) ([]byte, error) {
	if err := ValidateContent(c); err != nil {
		return nil, err
	}
	b, err := proto.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode content: %w", err)
	}
	if len(b) >= MaxContentSize {
		return nil, &LimitError{What: "content size", Limit: MaxContentSize - 1, Got: len(b)}
	}
	return Pad(b), nil
}

// DecodeContent unpads, decodes and validates decrypted content.
func DecodeContent(padded []byte) (*Content, error) {
	if len(padded) > MaxContentSize+PaddingBlock {
		return nil, &LimitError{What: "content size", Limit: MaxContentSize, Got: len(padded)}
	}
	b, err := Unpad(padded)
	if err != nil {
		return nil, err
	}
	c := new(Content)
	if err := unmarshal.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("decode content: %w", err)
	}
	if err := ValidateContent(c); err != nil {
		return nil, err
	}
	return c, nil
}

// ValidateContent checks the rules Content must keep beyond its schema.
func ValidateContent(c *Content) error {
	return validateContent(c, 0)
}

func validateContent(c *Content, depth int) error {
	if c == nil {
		return invalid("nil content")
	}
	if len(c.MessageId) != MessageIDSize {
		return invalid("content message_id must be %d bytes, got %d", MessageIDSize, len(c.MessageId))
	}
	if len(c.GroupId) != 0 && len(c.GroupId) != GroupIDSize {
		return invalid("group_id must be %d bytes, got %d", GroupIDSize, len(c.GroupId))
	}
	if q := c.Quote; q != nil {
		if len(q.MessageId) != MessageIDSize {
			return invalid("quote message_id must be %d bytes", MessageIDSize)
		}
		if len(q.Text) > MaxTextLen {
			return &LimitError{What: "quote length", Limit: MaxTextLen, Got: len(q.Text)}
		}
	}
	switch b := c.Body.(type) {
	case nil:
		return invalid("content has no body")
	case *Content_Text:
		if b.Text == nil {
			return invalid("empty text")
		}
		if len(b.Text.Body) > MaxTextLen {
			return &LimitError{What: "text length", Limit: MaxTextLen, Got: len(b.Text.Body)}
		}
	case *Content_Attachment:
		return validateAttachment(b.Attachment)
	case *Content_Receipt:
		r := b.Receipt
		if r == nil || r.Type == Receipt_TYPE_UNSPECIFIED || len(r.MessageIds) == 0 {
			return invalid("receipt needs a type and message ids")
		}
		if len(r.MessageIds) > MaxReceiptIDs {
			return &LimitError{What: "ids per receipt", Limit: MaxReceiptIDs, Got: len(r.MessageIds)}
		}
		for _, id := range r.MessageIds {
			if len(id) != MessageIDSize {
				return invalid("receipt message id must be %d bytes", MessageIDSize)
			}
		}
	case *Content_Typing:
		if b.Typing == nil {
			return invalid("empty typing")
		}
	case *Content_GroupUpdate:
		return validateGroupUpdate(b.GroupUpdate)
	case *Content_SenderKeyDistribution:
		d := b.SenderKeyDistribution
		if d == nil || len(d.GroupId) != GroupIDSize || len(d.Distribution) == 0 {
			return invalid("sender_key_distribution needs a group id and a message")
		}
	case *Content_RetryRequest:
		if b.RetryRequest == nil || b.RetryRequest.ServerId == 0 {
			return invalid("retry_request needs the server id")
		}
	case *Content_SyncSent:
		s := b.SyncSent
		if s == nil || s.Content == nil {
			return invalid("sync_sent carries no content")
		}
		if depth > 0 {
			return invalid("sync_sent may not nest")
		}
		if s.Destination != "" {
			if err := ValidateAccountName(s.Destination); err != nil {
				return err
			}
		} else if len(s.Content.GroupId) == 0 {
			return invalid("sync_sent needs a destination or a group")
		}
		return validateContent(s.Content, depth+1)
	}
	return nil
}

// GroupIDSize is the size of a random group id.
const GroupIDSize = 16

// AttachmentKeySize is the size of an attachment's key (AES ‖ HMAC).
const AttachmentKeySize = 64

func validateAttachment(a *AttachmentPointer) error {
	if a == nil {
		return invalid("empty attachment")
	}
	if a.ObjectKey == "" || len(a.ObjectKey) > 256 {
		return invalid("attachment object key must be 1–256 characters")
	}
	if len(a.Key) != AttachmentKeySize {
		return invalid("attachment key must be %d bytes", AttachmentKeySize)
	}
	if len(a.Digest) != 32 {
		return invalid("attachment digest must be 32 bytes")
	}
	if len(a.FileName) > MaxFileNameLen {
		return &LimitError{What: "file name length", Limit: MaxFileNameLen, Got: len(a.FileName)}
	}
	if len(a.Thumbnail) > MaxThumbnailLen {
		return &LimitError{What: "thumbnail size", Limit: MaxThumbnailLen, Got: len(a.Thumbnail)}
	}
	if len(a.Caption) > MaxTextLen {
		return &LimitError{What: "caption length", Limit: MaxTextLen, Got: len(a.Caption)}
	}
	return nil
}

func validateGroupUpdate(g *GroupUpdate) error {
	if g == nil || len(g.GroupId) != GroupIDSize {
		return invalid("group_update needs a %d-byte group id", GroupIDSize)
	}
	if g.Revision == 0 {
		return invalid("group_update revision starts at 1")
	}
	if len(g.Name) > MaxGroupNameLen {
		return &LimitError{What: "group name length", Limit: MaxGroupNameLen, Got: len(g.Name)}
	}
	if n := len(g.Members); n > MaxGroupMembers {
		return &LimitError{What: "group members", Limit: MaxGroupMembers, Got: n}
	}
	seen := make(map[string]struct{}, len(g.Members))
	for _, m := range g.Members {
		if m == nil {
			return invalid("nil group member")
		}
		if err := ValidateAccountName(m.Account); err != nil {
			return err
		}
		if _, dup := seen[m.Account]; dup {
			return invalid("group member %s listed twice", m.Account)
		}
		seen[m.Account] = struct{}{}
	}
	if len(g.Targets) > MaxGroupMembers {
		return &LimitError{What: "group update targets", Limit: MaxGroupMembers, Got: len(g.Targets)}
	}
	for _, t := range g.Targets {
		if err := ValidateAccountName(t); err != nil {
			return err
		}
	}
	return nil
}
