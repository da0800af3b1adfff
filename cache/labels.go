package cache

import "github.com/rugby110/glimpse/api"

// ValidLabel reports whether s is a glimpse label: letters, digits and '-',
// 1 to 63 characters. It takes a label off the wire ([]byte) as well.
func ValidLabel[T ~string | ~[]byte](s T) bool { return api.ValidLabel(s) }
