"""The billing manager: accounts, prepaid funding, credit holds, bills and credentials (meterline.billing.v1.BillingManager, meterline.auth.v1.AuthService)."""
