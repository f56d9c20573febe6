"""The billing manager: accounts, prepaid funding, credit holds, bills and credentials.

Serves meterline.billing.v1.BillingManager and meterline.auth.v1.AuthService.
"""
