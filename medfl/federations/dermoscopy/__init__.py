"""The dermoscopy federation of PRR-FL: HAM10000 by acquisition source (four clients, three classes)."""
