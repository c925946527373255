-- The CRM (PostgreSQL): contacts as the sales team keeps them.
CREATE TABLE contacts (
  id bigserial PRIMARY KEY,
  full_name text NOT NULL,
  email_address text,
  phone text,
  street text,
  city text,
  postal_code text,
  country char(2),                    -- ISO 3166 code
  shipping_preference text,           -- 'Standard', 'Express', 'Pickup'
  payment_terms text,                 -- read-only here: the ERP owns it
  credit_limit numeric(12,2),         -- read-only here: the ERP owns it
  notes text,
  active boolean NOT NULL DEFAULT true, -- false once the ERP deleted or deactivated the customer
  updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO contacts (full_name, email_address, phone, street, city, postal_code, country, shipping_preference, notes) VALUES
  ('Ada Lovelace', 'ada@analytical.example', '+44 20 7946 0001', '12 St James Sq', 'London', 'SW1Y', 'GB', 'Express', 'Prefers email'),
  ('Grace Hopper', 'GRACE@navy.example', '+1 202 555 0142', '1 Cobol Way', 'Arlington', '22201', 'US', 'Standard', NULL),
  ('Alan Turing', 'alan@bletchley.example', NULL, '3 Park Lane', 'Bletchley', 'MK3', 'GB', 'Pickup', 'Met at the fair');
