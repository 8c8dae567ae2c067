// Package archtest holds tests of the code base's shape rather than its
// behaviour: rules from the style guide that a reviewer would otherwise
// have to count by hand (see funclen_test.go).
package archtest
