package kafkabus_test

import "github.com/keymeter/keymeter/internal/testfix/kafkatest"

// The tests run against a real Kafka broker (see kafkatest).
var (
	brokers            = kafkatest.Brokers
	prefix             = kafkatest.Prefix
	startPrivateBroker = kafkatest.StartPrivateBroker
)
