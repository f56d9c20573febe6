"""The rating service: tariffs and the pricing of usage (meterline.rating.v1.RatingService)."""
