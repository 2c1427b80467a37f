package client

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"

	// Decoders for the image types that get a thumbnail.
	_ "image/gif"
	_ "image/png"

	"golang.org/x/image/draw"

	"github.com/hushchat/hush/protocol"
)

// Thumbnails are made by the sender from the file it is about to encrypt
// and travel inside the end-to-end encrypted message (the attachment
// pointer), never to the media server. Only PNG, JPEG and GIF get one: the
// standard library decodes them, and they are what chat images are.
const (
	// ThumbnailMaxSide bounds the thumbnail's longer side in pixels.
	ThumbnailMaxSide = 128
	// MaxThumbnailPixels bounds the images decoded for a thumbnail:
	// decoding holds the whole bitmap (up to 4 bytes a pixel), so larger
	// images are sent with their dimensions but without a preview.
	MaxThumbnailPixels = 16 << 20
	// thumbnailQuality is the JPEG quality tried first; lower ones follow
	// if the result does not fit protocol.MaxThumbnailLen.
	thumbnailQuality = 75
)

// thumbnailTypes are the content types that get a thumbnail.
var thumbnailTypes = map[string]bool{"image/png": true, "image/jpeg": true, "image/gif": true}

// errNoThumbnail says an image is too large to decode for a preview.
var errNoThumbnail = errors.New("image too large for a thumbnail")

// imageInfo reads an image's dimensions from r (without decoding the
// pixels) and, when it is small enough, a JPEG thumbnail of it: the
// longer side at most ThumbnailMaxSide pixels, at most
// protocol.MaxThumbnailLen bytes. rewind returns a fresh reader of the
// image for the decode pass. A file that does not decode gets neither
// (it is sent as a plain file); that is not an error.
func imageInfo(r io.Reader, rewind func() (io.Reader, error)) (thumb []byte, width, height uint32, err error) {
	cfg, _, err := image.DecodeConfig(r)
	if err != nil || cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, 0, 0, nil // not an image after all: no preview
	}
	width, height = uint32(cfg.Width), uint32(cfg.Height)
	if int64(cfg.Width)*int64(cfg.Height) > MaxThumbnailPixels {
		return nil, width, height, nil
	}
	r2, err := rewind()
	if err != nil {
		return nil, 0, 0, err
	}
	img, _, err := image.Decode(r2)
	if err != nil {
		return nil, width, height, nil // a damaged image: dimensions only
	}
	thumb, err = makeThumbnail(img)
	if err != nil {
		return nil, width, height, nil
	}
	return thumb, width, height, nil
}

// makeThumbnail scales img down (never up) to fit ThumbnailMaxSide,
// flattens it on white (JPEG has no alpha) and encodes it as JPEG.
func makeThumbnail(img image.Image) ([]byte, error) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w <= 0 || h <= 0 {
		return nil, errNoThumbnail
	}
	tw, th := w, h
	if w > ThumbnailMaxSide || h > ThumbnailMaxSide {
		if w >= h {
			tw, th = ThumbnailMaxSide, max(1, h*ThumbnailMaxSide/w)
		} else {
			tw, th = max(1, w*ThumbnailMaxSide/h), ThumbnailMaxSide
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, tw, th))
	draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	// BiLinear as a kernel averages every source pixel under each target
	// pixel, so a large downscale does not alias the way sampling does.
	draw.BiLinear.Scale(dst, dst.Bounds(), img, b, draw.Over, nil)
	for q := thumbnailQuality; q >= 20; q -= 15 {
		var buf bytes.Buffer
		if err := jpeg.Encode(&buf, dst, &jpeg.Options{Quality: q}); err != nil {
			return nil, fmt.Errorf("encode thumbnail: %w", err)
		}
		if buf.Len() <= protocol.MaxThumbnailLen {
			return buf.Bytes(), nil
		}
	}
	return nil, errNoThumbnail
}
