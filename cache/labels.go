package cache

// ValidLabel reports whether s is a glimpse label: letters, digits and '-',
// 1 to 63 characters. It takes a label off the wire ([]byte) as well.
func ValidLabel[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
